"""A small tokenizer folder with aliases, an implication table holding a cycle, and odd tag names.

Shared by the normalisation and caption tests. The DATA_DIR keeps some raw spellings (an alias, upper
case, a duplicate) so normalising it has something to change.
"""

from __future__ import annotations

from pathlib import Path

from tiny_model import write_data_dir

GENERAL = ["1girl", "long_hair", "cat_ears", "animal_ears", "animal_features", "alpha", "beta", "gamma", "delta",
           ":d", "^_^", "?", "...", "null"]
ALIASES = [("longhair", "long_hair"), ("gfl", "girls'_frontline"), ("kitty_ears", "cat_ears")]
# alpha -> beta -> gamma -> alpha is a cycle; feline is implied but never in the vocabulary.
IMPLICATIONS = [("cat_ears", "animal_ears"), ("animal_ears", "animal_features"), ("alpha", "beta"), ("beta", "gamma"),
                ("gamma", "alpha"), ("gamma", "delta"), ("cat_ears", "feline"),
                ("springfield_(girls'_frontline)", "girls'_frontline")]


def tag_posts(count: int = 30) -> list[dict]:
    """Posts using every tag above; post 0 spells long_hair three ways, post 1 uses the alias gfl."""
    posts = []
    for index in range(count):
        general = [tag for position, tag in enumerate(GENERAL) if (index + position) % 3 != 0]
        posts.append({
            "id": index, "rating": "gsqe"[index % 4], "score": index,
            "meta": ["highres"], "general": general or ["1girl"], "artist": [f"artist_{index % 3}"],
            "copyright": ["girls'_frontline"], "character": ["springfield_(girls'_frontline)"] if index % 2 else [],
        })
    posts[0]["general"] += ["longhair", "Long_Hair", "long_hair"]
    posts[1]["copyright"] = ["gfl"]
    return posts


def write_table(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """A Danbooru-style antecedent/consequent TSV."""
    path.write_text("antecedent\tconsequent\n" + "".join(f"{a}\t{c}\n" for a, c in pairs), encoding="utf-8")
    return path


def build_tag_tokenizer(folder: Path) -> tuple[Path, Path]:
    """Write ``folder/data`` (DATA_DIR) and ``folder/tokenizer`` (aliases, implications); return both paths."""
    from booru_embed.data.tokenizer_build import build_tokenizer

    data_dir = write_data_dir(folder / "data", tag_posts())
    tokenizer_dir = folder / "tokenizer"
    build_tokenizer(data_dir, tokenizer_dir, aliases=write_table(folder / "aliases.tsv", ALIASES),
                    implications=write_table(folder / "implications.tsv", IMPLICATIONS),
                    min_counts={c: 1 for c in ("general", "artist", "copyright", "character", "meta")})
    return data_dir, tokenizer_dir
