"""How well score_tags finds a wrong tag, against the related-tags baseline and chance, in one process.

Injected tags: in each held-out post with at least ``--min-tags`` known tags, one known tag is swapped
for a random vocabulary tag of the SAME category that the post lacks; each method ranks the post's
known tags from least to most plausible, and we report how often the injected tag comes first (hit@1)
and its mean reciprocal rank (MRR), as mean and spread (std) over ``--seeds`` injection draws:
  model p           score_tags: p(tag | rest of the post), leave-one-out through the masked-tag head
  model distinctive score_tags(distinctive=True): p(tag | rest) / sqrt(p(tag | no tags))
  model pmi         p(tag | rest) / p(tag | no tags)
  related tags      sum of the tag's cosines n(a,b)/sqrt(n(a)n(b)) to the post's other tags (training
                    split counts; evaluation.CooccurrenceBaseline), ties broken at random
  model with counts the mean of log(model distinctive) and log(related tags) (ranking.with_counts, the
                    ranking of suggest(..., distinctive=True, related=...))
  chance            a random order: hit@1 = 1/n, MRR = H(n)/n, averaged over the posts
Contradicting traits (with ``--truth``, the generator's posts.truth.json): for every character with a
hair colour, the post {character, copyright, its traits} plus each other hair colour of the
vocabulary in turn; we report how often the least plausible tag is one of the two hair colours and
how often it is the added one.

    python bench/bench_audit.py MODEL_DIR DATA_DIR [--truth posts.truth.json] [--seeds 3] [--max-posts N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from booru_embed.data.bulk_encoding import encode_dataset
from booru_embed.data.synthetic import HAIR_COLOURS
from booru_embed.embedder import BooruEmbedder
from booru_embed.evaluation import Evaluator, posts_from_encoded
from booru_embed.modeling.categories_booru_embed import CATEGORY_NAMES, TAG_CATEGORIES
from booru_embed.ranking import with_counts
from booru_embed.sequences import TokenInfo

METHODS = ("model p", "model distinctive", "model pmi", "related tags", "model with counts", "chance")


def ranks(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-based rank of every entry from the lowest score up, ties broken at random."""
    order = np.lexsort((rng.random(len(scores)), scores))
    out = np.empty(len(scores), dtype=np.int64)
    out[order] = np.arange(1, len(scores) + 1)
    return out


def fit_scores(embedder: BooruEmbedder, baseline, tagset: dict, names: list[str]) -> dict[str, np.ndarray]:
    """Fit of each of ``names`` (the known tags of ``tagset``) under every method but chance."""
    p = embedder.score_tags(tagset)
    prob = np.array([p[name] for name in names])
    ids = [embedder.tokenizer.tag_to_id(name) for name in names]
    prior = np.exp(np.asarray(embedder._log_prior())[ids])  # p(tag | no tags), as score_tags(distinctive=True) uses
    dist = prob / np.sqrt(prior)
    cosine_sum = baseline.suggest_scores([np.asarray(ids)])[0][ids]  # the cosine's diagonal is zero
    return {"model p": prob, "model distinctive": dist, "model pmi": prob / prior, "related tags": cosine_sum,
            "model with counts": with_counts(np.log(dist), cosine_sum)}


def inject(rows: list[dict], embedder: BooruEmbedder, seed: int, min_tags: int) -> list[tuple[dict, list[str], int]]:
    """(modified post, its known tags, index of the injected one, its category) per post with enough known tags."""
    tokenizer = embedder.tokenizer
    categories = np.asarray(tokenizer.token_categories)
    by_category = {name: [t for t in tokenizer.tag_token_ids if CATEGORY_NAMES[categories[t]] == name]
                   for name in TAG_CATEGORIES}
    rng = np.random.default_rng(seed)
    cases = []
    for row in rows:
        known = [(c, t) for c in TAG_CATEGORIES for t in row[c] if tokenizer.tag_to_id(t) is not None]
        if len(known) < min_tags:
            continue
        present = {tokenizer.tag_to_id(t) for _, t in known}
        swappable = [(c, t) for c, t in known if len(by_category[c]) > sum(x == c for x, _ in known)]
        if not swappable:
            continue
        category, old = swappable[int(rng.integers(len(swappable)))]
        pool = [t for t in by_category[category] if t not in present]
        new = tokenizer.convert_ids_to_tokens(int(pool[int(rng.integers(len(pool)))]))
        post = {c: [new if (c, t) == (category, old) else t for t in row[c]] for c in TAG_CATEGORIES}
        post.update(rating=row["rating"], score=row["score"])
        names = [new if (c, t) == (category, old) else t for c, t in known]
        cases.append((post, names, names.index(new), category))
    return cases


def injected_tags(embedder: BooruEmbedder, baseline, rows: list[dict], seeds: int, min_tags: int) -> None:
    """Print hit@1 and MRR of the injected tag per method, mean and std over the seeds."""
    results = {method: {"hit": [], "mrr": []} for method in METHODS}
    start, scored = time.perf_counter(), 0
    by_category: dict[str, dict[str, list[bool]]] = {}  # category -> method -> hit@1 per case, all seeds
    for seed in range(seeds):
        cases = inject(rows, embedder, seed, min_tags)
        rng = np.random.default_rng([seed, 1])
        found = {method: [] for method in METHODS[:-1]}
        chance_hit, chance_mrr = [], []
        for post, names, target, category in cases:
            for method, scores in fit_scores(embedder, baseline, post, names).items():
                found[method].append(ranks(scores, rng)[target])
                by_category.setdefault(category, {}).setdefault(method, []).append(found[method][-1] == 1)
            n = len(names)
            chance_hit.append(1 / n)
            chance_mrr.append(sum(1 / k for k in range(1, n + 1)) / n)
            scored += n
        for method, values in found.items():
            values = np.asarray(values)
            results[method]["hit"].append(float((values == 1).mean()))
            results[method]["mrr"].append(float((1 / values).mean()))
        results["chance"]["hit"].append(float(np.mean(chance_hit)))
        results["chance"]["mrr"].append(float(np.mean(chance_mrr)))
        print(f"seed {seed}: hit@1 " + ", ".join(f"{m} {results[m]['hit'][-1]:.3f}" for m in METHODS), flush=True)
    elapsed = time.perf_counter() - start
    print(f"\ninjected tags: {len(cases)} posts with >= {min_tags} known tags, {seeds} seeds "
          f"({scored / elapsed:,.0f} leave-one-out sequences/s incl. the baseline)\n")
    print("| method | hit@1 | MRR |\n|---|---:|---:|")
    for method in METHODS:
        hit, mrr = np.asarray(results[method]["hit"]), np.asarray(results[method]["mrr"])
        print(f"| {method} | {hit.mean():.3f} ± {hit.std():.3f} | {mrr.mean():.3f} ± {mrr.std():.3f} |")
    print("\nhit@1 by the injected tag's category (all seeds pooled)\n")
    print("| category | cases | " + " | ".join(METHODS[:-1]) + " |\n|---|---:|" + "---:|" * (len(METHODS) - 1))
    for category, hits in sorted(by_category.items()):
        cells = " | ".join(f"{np.mean(hits[m]):.3f}" for m in METHODS[:-1])
        print(f"| {category} | {len(hits[METHODS[0]])} | {cells} |")


def contradicting_hair(embedder: BooruEmbedder, baseline, truth: dict) -> None:
    """Print how often the least plausible tag is one of two hair colours, and the added one."""
    tokenizer = embedder.tokenizer
    colours = [c for c in HAIR_COLOURS if tokenizer.tag_to_id(c) is not None]
    counts = {method: [0, 0] for method in METHODS[:-1]}
    chance = [0.0, 0.0]
    cases = 0
    rng = np.random.default_rng(0)
    for name, info in truth["characters"].items():
        hair = [t for t in info["traits"] if t in colours]
        tags = [name, info["copyright"], *info["traits"]]
        if len(hair) != 1 or any(tokenizer.tag_to_id(t) is None for t in tags):
            continue
        for extra in (c for c in colours if c != hair[0]):
            names = [*tags, extra]
            post = {"character": [name], "copyright": [info["copyright"]], "general": names[2:]}
            for method, scores in fit_scores(embedder, baseline, post, names).items():
                least = int(np.argmin(ranks(scores, rng)))
                counts[method][0] += names[least] in (extra, hair[0])
                counts[method][1] += names[least] == extra
            chance[0] += 2 / len(names)
            chance[1] += 1 / len(names)
            cases += 1
    print(f"\ncontradicting hair colours: {cases} posts (character + copyright + its traits + a second hair colour)\n")
    print("| method | least plausible is a hair colour | ... is the added one |\n|---|---:|---:|")
    for method, (either, added) in counts.items():
        print(f"| {method} | {either / cases:.3f} | {added / cases:.3f} |")
    print(f"| chance | {chance[0] / cases:.3f} | {chance[1] / cases:.3f} |")


def main() -> None:
    """Parse arguments, build the baseline from the training split, print both tables."""
    import datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--truth", type=Path, help="posts.truth.json of the generated corpus")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--min-tags", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--max-posts", type=int, help="first N posts of the test split (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    embedder = BooruEmbedder.from_pretrained(args.model_dir, device="cpu")
    splits = datasets.load_from_disk(str(args.data_dir))
    test = splits["test"] if args.max_posts is None else splits["test"].select(range(args.max_posts))
    start = time.perf_counter()
    train_posts = posts_from_encoded(encode_dataset(embedder.tokenizer, splits["train"]))
    baseline = Evaluator(TokenInfo.from_tokenizer(embedder.tokenizer), train_posts, train_posts[:1],
                         embedder.tokenizer.tag_to_id).baseline
    print(f"related-tags baseline from {len(train_posts)} training posts in {time.perf_counter() - start:.1f} s")
    rows = test.select_columns([*TAG_CATEGORIES, "rating", "score"]).to_list()
    injected_tags(embedder, baseline, rows, args.seeds, args.min_tags)
    if args.truth:
        contradicting_hair(embedder, baseline, json.loads(args.truth.read_text()))


if __name__ == "__main__":
    main()
