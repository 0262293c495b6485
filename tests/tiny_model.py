"""A tiny, untrained model folder for usage tests: real tokenizer and model code, random weights.

The folder looks exactly like a trained MODEL_DIR (weights, config with auto_map, remote code,
tokenizer files with an implication table), so loading, embedding, suggesting and publishing can be
tested in seconds; the answers of an untrained model are arbitrary, the rules they obey are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TAG_CATEGORIES = ("meta", "general", "artist", "copyright", "character")
IMPLICATIONS = [("cat_ears", "animal_ears"), ("animal_ears", "animal_features"), ("usada_pekora", "rabbit_ears")]


def tiny_posts(count: int = 120) -> list[dict]:
    """Posts with a little structure: every tag appears at least twice."""
    general = ["1girl", "solo", "long_hair", "smile", "blue_hair", "cat_ears", "animal_ears", "animal_features",
               "rabbit_ears", "open_mouth", "skirt", ":d", "^_^", "null"]
    posts = []
    for index in range(count):
        tags = [tag for position, tag in enumerate(general) if (index + position) % 3 == 0]
        posts.append({
            "id": index, "rating": "gsqe"[index % 4], "score": index % 37,
            "meta": ["highres"] if index % 2 else [], "general": tags or ["1girl"],
            "artist": [f"artist_{index % 5}"], "copyright": ["hololive" if index % 2 else "vocaloid"],
            "character": ["usada_pekora" if index % 2 else "hatsune_miku"] if index % 3 else [],
        })
    return posts


def write_data_dir(folder: Path, posts: list[dict]) -> Path:
    """Save ``posts`` as a DATA_DIR (train = all posts, test = every fifth)."""
    import datasets

    features = datasets.Features({
        "id": datasets.Value("int64"), "rating": datasets.Value("string"), "score": datasets.Value("int32"),
        **{category: datasets.List(datasets.Value("string")) for category in TAG_CATEGORIES},
    })
    data = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(posts, features=features),
        "test": datasets.Dataset.from_list(posts[::5], features=features),
    })
    data.save_to_disk(str(folder))
    return folder


def build_tiny_model(folder: Path, seed: int = 0, aliases: Sequence[tuple[str, str]] = (), **config: object) -> Path:
    """Write DATA_DIR ``folder/data`` and the model folder ``folder/model``; return the model folder.

    ``aliases`` (antecedent, canonical) pairs go into the tokenizer's alias table (none by default);
    ``config`` overrides model config values (``pooling="attention"``, say).
    """
    import torch

    from booru_embed.modeling.configuration_booru_embed import BooruEmbedConfig
    from booru_embed.modeling.modeling_booru_embed import BooruEmbedForPreTraining
    from booru_embed.data.tokenizer_build import build_tokenizer

    data_dir = write_data_dir(folder / "data", tiny_posts())
    implications = folder / "implications.tsv"
    implications.write_text("antecedent\tconsequent\n" + "".join(f"{a}\t{c}\n" for a, c in IMPLICATIONS))
    alias_file = None
    if aliases:
        alias_file = folder / "aliases.tsv"
        alias_file.write_text("antecedent\tconsequent\n" + "".join(f"{a}\t{c}\n" for a, c in aliases))
    model_dir = folder / "model"
    tokenizer = build_tokenizer(data_dir, model_dir, aliases=alias_file, implications=implications,
                                min_counts={category: 1 for category in TAG_CATEGORIES})
    torch.manual_seed(seed)
    config = BooruEmbedConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, embedding_dim=48, nested_dims=[16, 32],
                              num_score_buckets=len(tokenizer.score_token_ids), **config)
    BooruEmbedForPreTraining(config).save_pretrained(model_dir)
    return model_dir
