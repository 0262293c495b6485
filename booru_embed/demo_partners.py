"""The demo's check on a ``danbooru-pairs`` corpus: does the model know each character's real partners?

For a character (with its copyright) the model suggests general tags (ranked like Danbooru's related
tags: ``suggest(..., distinctive=True)``), so does the model with the training split's counts
(``related=``, ``related_tags``), and so does the related-tags baseline counted from the training split
(``sum of cos(visible, tag)``, the evaluation's baseline). A suggestion is right when
the pair table lists it as one of the character's general partners (the truth file's ``partners``).
``partner_precision`` is the share of right answers in each side's top 10, over every character with
at least ``MIN_TEST_POSTS`` test posts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TOP_K = 10
MIN_TEST_POSTS = 3  # a character seen this often in the test split was seen in training too
FAMOUS = ("usada_pekora", "hatsune_miku", "hakurei_reimu")  # characters most Danbooru users know


class PartnerCounts:
    """The related-tags baseline of a DATA_DIR's training split, and each tag's test-split post count."""

    def __init__(self, data_dir: str | Path, tokenizer: Any) -> None:
        import datasets

        from .data.bulk_encoding import encode_dataset
        from .modeling.categories_booru_embed import CATEGORY_IDS
        from .related_tags import RelatedTags, tag_incidence
        from .sequences import TokenInfo

        info = TokenInfo.from_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.general = info.tag_candidates() & (info.token_categories == CATEGORY_IDS["general"])
        self.related = RelatedTags.from_split(data_dir, tokenizer, "train", max_posts=None)
        test = datasets.load_from_disk(str(data_dir))["test"]
        self.test_posts = np.asarray(tag_incidence(encode_dataset(tokenizer, test)["input_ids"], info).sum(axis=0)).ravel()

    def suggest(self, visible: list[int], top_k: int = TOP_K) -> list[str]:
        """The ``top_k`` general tags by summed cosine to the ``visible`` tag ids."""
        scores = self.related.scores(visible)
        scores[~self.general] = -np.inf
        scores[visible] = -np.inf
        best = np.argsort(-scores, kind="stable")[:top_k]
        return [self.tokenizer.convert_ids_to_tokens(int(i)) for i in best if np.isfinite(scores[i])]


def character_cases(truth: dict, tokenizer: Any, related: PartnerCounts) -> list[tuple[str, dict, list[int]]]:
    """(character, visible tags by category, visible ids) of each character with partners in the vocabulary
    and either enough test posts or a place in ``FAMOUS``."""
    cases = []
    for name, entry in truth["characters"].items():
        char_id = tokenizer.tag_to_id(name)
        if char_id is None or not entry.get("partners") or (related.test_posts[char_id] < MIN_TEST_POSTS
                                                             and name not in FAMOUS):
            continue
        copyright_id = tokenizer.tag_to_id(entry["copyright"]) if entry.get("copyright") else None
        tags = {"character": [name], **({"copyright": [entry["copyright"]]} if copyright_id is not None else {})}
        cases.append((name, tags, [char_id] + ([copyright_id] if copyright_id is not None else [])))
    return cases


def show_partners(embedder: Any, truth: dict, data_dir: str | Path) -> dict[str, float]:
    """Print the famous characters' suggestions (the model, the model with the training split's counts, and
    related tags; ``*`` = a real partner) and one line of precision@10 over all characters; return
    ``{"model": p, "with counts": p, "related": p, "characters": n}``."""
    counts = PartnerCounts(data_dir, embedder.tokenizer)
    cases = character_cases(truth, embedder.tokenizer, counts)
    tagsets = [tags for _, tags, _ in cases]
    options = {"top_k": TOP_K, "categories": ["general"], "expand_implications": False, "distinctive": True}
    model_top = embedder.suggest_many(tagsets, **options)
    with_counts_top = embedder.suggest_many(tagsets, related=counts.related, **options)
    hits = {"model": [], "with counts": [], "related": []}
    for (name, tags, visible), model, fused in zip(cases, model_top, with_counts_top):
        partners = truth["characters"][name]["partners"]
        answers = {"model": [tag for tag, _ in model][:TOP_K], "with counts": [tag for tag, _ in fused][:TOP_K],
                   "related": counts.suggest(visible)}
        if counts.test_posts[visible[0]] >= MIN_TEST_POSTS:
            for side, top in answers.items():
                hits[side].append(sum(tag in partners for tag in top) / TOP_K)
        if name in FAMOUS:
            print(f"\npost: {tags} ({int(counts.test_posts[visible[0]])} test posts)")
            print(f"  real partners (pair table, share of its posts): "
                  + ", ".join(f"{t} {r:.2f}" for t, r in list(partners.items())[:8]) + ", ...")
            for side, top in answers.items():
                shown = ", ".join(f"{t}{'*' if t in partners else ''}" for t in top)
                print(f"  {side + ':':<13}{shown}  ({sum(t in partners for t in top)}/{TOP_K} real)")
    result = {side: float(np.mean(values)) if values else 0.0 for side, values in hits.items()}
    print(f"\nprecision@{TOP_K} against the real partners, {len(hits['model'])} characters with >= {MIN_TEST_POSTS} "
          f"test posts: model {result['model']:.3f}, model with the counts {result['with counts']:.3f}, "
          f"related tags {result['related']:.3f}")
    return {**result, "characters": float(len(hits["model"]))}
