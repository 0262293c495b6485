"""Captions for image-model trainers from a DATA_DIR: kohya metadata JSON, one text file per post, or JSONL.

``booru-embed export-captions DATA_DIR --output OUT --format kohya-json|txt|jsonl [--split train|test|all]
[--order artist,character,...] [--separator ", "] [--style tags|prompt] [--implications keep|minimal|complete]
[--tokenizer DIR] [--rating-words] [--score-words] [--complete MODEL_DIR --threshold P] [--extension .txt]``

A caption is ``[rating word] [score word] tags``: the post's tags normalised (``tags.py``; with
``--tokenizer`` aliases and implications too, without it only spelling and duplicates), categories in
``--order`` (categories not named follow in canonical order, so nothing is dropped), written in
``--style`` and joined by ``--separator``.

Rating words are Danbooru's names (g general, s sensitive, q questionable, e explicit). Score words
are neutral thirds of the score distribution: ``low_score``, ``average_score``, ``high_score``, cut at
the 1/3 and 2/3 quantiles of the train split's scores (recorded in ``export_info.json``); like tags
they follow ``--style`` (``high score`` in prompt style).

``--complete MODEL_DIR --threshold P`` adds the tags the model suggests with probability at least P
(``BooruEmbedder.suggest``, model tags only, then normalised again with ``--implications``); every
addition is listed in ``OUT/added_tags.jsonl``. The export streams Arrow batches, writes as it goes
(the kohya JSON object too) and keeps memory bounded; ``OUT/export_info.json`` has the counts.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import UsageError
from .modeling.categories_booru_embed import RATING_ALIASES, TAG_CATEGORIES
from .modeling.normalization_booru_embed import (
    NormalizedTags,
    TagNormalizer,
    category_order,
    prompt_tag,
)
from .tags import CHANGE_KEYS, add_normalization_flags, count_changes, load_data_dir, load_tokenizer

FORMATS = ("kohya-json", "txt", "jsonl")
FORMAT_FILES = {"kohya-json": "metadata.json", "jsonl": "captions.jsonl"}
EXTENSIONS = (".txt", ".caption")
INFO_FILE = "export_info.json"
ADDED_FILE = "added_tags.jsonl"
RATING_WORDS = {letter: word for word, letter in RATING_ALIASES.items()}
SCORE_WORDS = ("low_score", "average_score", "high_score")
COMPLETE_TOP_K = 32  # model suggestions read per post for --complete; the threshold picks among them
BATCH_ROWS = 4096  # posts per Arrow batch read
COMPLETE_BATCH = 256  # posts captioned together (one batched model call for --complete)


def score_thresholds(data: Any) -> list[int]:
    """The 1/3 and 2/3 quantiles of the train split's scores (of the first split without a train split)."""
    import numpy as np
    import pyarrow.compute as pc

    split = data["train"] if "train" in data else next(iter(data.values()))
    if "score" not in split.column_names:
        raise UsageError("--score-words needs a score column")
    scores = pc.drop_null(split.with_format("arrow")["score"]).to_numpy()
    if not len(scores):
        raise UsageError("--score-words: the train split has no scores")
    return [int(q) for q in np.quantile(scores, [1 / 3, 2 / 3], method="higher")]


def score_word(score: int, thresholds: list[int]) -> str:
    """The word of a score's third: below the first cut low, from the last cut high."""
    return SCORE_WORDS[sum(score >= cut for cut in thresholds)]


class CaptionWriter:
    """Writes captions in one format into ``folder``, incrementally (the kohya JSON object too).

    The single-file formats are written to ``<name>.partial`` and renamed when the export completes, so
    an interrupted export never leaves a well-formed but incomplete ``metadata.json``.
    """

    def __init__(self, folder: Path, form: str, extension: str) -> None:
        self.folder, self.form, self.extension = folder, form, extension
        self._handle: IO[str] | None = None
        self._first = True
        if form in FORMAT_FILES:
            self._path = folder / FORMAT_FILES[form]
            self._handle = self._path.with_name(self._path.name + ".partial").open("w", encoding="utf-8")
            if form == "kohya-json":
                self._handle.write("{")

    def write(self, post_id: int, caption: str, extra: dict[str, Any]) -> None:
        """Write one post's caption (``extra`` goes into the JSONL line)."""
        if self.form == "txt":
            (self.folder / f"{post_id}{self.extension}").write_text(caption + "\n", encoding="utf-8")
        elif self.form == "kohya-json":
            key = json.dumps(str(post_id))
            self._handle.write(f"{'' if self._first else ','}\n{key}: {json.dumps({'tags': caption}, ensure_ascii=False)}")
        else:
            self._handle.write(json.dumps({"id": post_id, "caption": caption, **extra}, ensure_ascii=False) + "\n")
        self._first = False

    def close(self, complete: bool) -> None:
        """Close the file; when ``complete``, finish it (the kohya object's closing brace) and give it its name."""
        if self._handle is not None:
            if complete and self.form == "kohya-json":
                self._handle.write("\n}\n")
            self._handle.close()
            if complete:
                Path(self._handle.name).replace(self._path)


def parse_order(value: str | None) -> list[str] | None:
    """``--order`` as a list of category names; UsageError for an unknown or repeated name."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    try:
        category_order(names)
    except ValueError as error:
        raise UsageError(f"--order: {error}") from None
    if len(set(names)) != len(names) or not names:
        raise UsageError(f"--order names each category at most once, got {value!r}")
    return names


def _normalized_batches(exporter: CaptionExporter, posts: Iterator[dict[str, Any]], total: int
                        ) -> Iterator[list[tuple[dict[str, Any], NormalizedTags]]]:
    """(row, normalised tags) in lists of COMPLETE_BATCH, with a progress bar; a malformed row raises
    UsageError after the rows before it were yielded, so they are still written."""
    from tqdm.auto import tqdm

    pending: list[tuple[dict[str, Any], NormalizedTags]] = []
    for post in tqdm(posts, total=total, desc="export-captions", unit="post"):
        try:
            pending.append((post, exporter.normalized(post)))
        except UsageError:
            if pending:
                yield pending
            raise
        if len(pending) == COMPLETE_BATCH:
            yield pending
            pending = []
    if pending:
        yield pending


def _posts(data: Any, splits: list[str], batch_size: int) -> Iterator[dict[str, Any]]:
    """Rows of the chosen splits as dicts, read in Arrow batches."""
    for name in splits:
        split = data[name]
        columns = [c for c in ("id", "rating", "score", *TAG_CATEGORIES) if c in split.column_names]
        for batch in split.select_columns(columns).with_format("arrow").iter(batch_size=batch_size):
            yield from batch.to_pylist()


class CaptionExporter:
    """Turns DATA_DIR rows into captions with the chosen normalisation, words and model completion."""

    def __init__(self, args: argparse.Namespace, normalizer: Any, embedder: Any, thresholds: list[int] | None) -> None:
        self.args, self.normalizer, self.embedder, self.thresholds = args, normalizer, embedder, thresholds
        self.order = parse_order(args.order)
        self.counts: Counter = Counter({key: 0 for key in CHANGE_KEYS})

    def complete(self, rows: list[tuple[dict[str, Any], NormalizedTags]]
                 ) -> list[tuple[str, NormalizedTags, list[tuple[str, float]]]]:
        """Caption, normalised tags and model-added ``(tag, probability)`` of each (row, ``normalized(row)``);
        with ``--complete`` the model suggests for all of them in batched forward passes (``suggest_many``)."""
        results = [result for _, result in rows]
        added: list[list[tuple[str, float]]] = [[] for _ in rows]
        todo = [i for i, result in enumerate(results) if self.embedder is not None and result.all_tags()]
        if todo:
            present = {i: {**results[i].tags, "rating": results[i].rating} for i in todo}
            for tags in present.values():
                tags.pop("unknown")
            suggestions = self.embedder.suggest_many([present[i] for i in todo], top_k=COMPLETE_TOP_K,
                                                     expand_implications=False)
            for i, found in zip(todo, suggestions):
                added[i] = [(tag, score) for tag, score in found if score >= self.args.threshold]
                if added[i]:
                    for tag, _ in added[i]:
                        category = self.embedder.category_of(tag)
                        present[i][category] = [*present[i][category], tag]
                    results[i] = self.normalizer.normalize(present[i], self.args.implications)
        return [(self._caption_text(post, result), result, model_added)
                for (post, _), result, model_added in zip(rows, results, added)]

    def normalized(self, post: dict[str, Any]) -> NormalizedTags:
        """One row's tags normalised with ``--implications``, its changes counted; UsageError naming a bad row."""
        tags = {c: post.get(c) or [] for c in TAG_CATEGORIES}
        try:
            result = self.normalizer.normalize({**tags, "rating": post.get("rating")}, self.args.implications)
        except ValueError as error:
            raise UsageError(f"post id {post['id']}: {error}") from None
        changed = any(set(result.tags[c]) != set(tags[c]) for c in TAG_CATEGORIES)
        count_changes(self.counts, result, changed)
        return result

    def _caption_text(self, post: dict[str, Any], result: NormalizedTags) -> str:
        """The caption of one row: rating and score words, then its tags in the chosen style and order."""
        words = []
        if self.args.rating_words and result.rating is not None:
            words.append(RATING_WORDS[result.rating])
        if self.thresholds is not None and post.get("score") is not None:
            words.append(score_word(int(post["score"]), self.thresholds))
        if self.args.style == "prompt":
            words = [prompt_tag(w) for w in words]
        body = result.to_string(self.args.style, order=self.order, separator=self.args.separator, metadata=False)
        return self.args.separator.join([*words, body] if body else words)


def export_captions(args: argparse.Namespace) -> dict[str, Any]:
    """Run the export described by ``args`` (the command's flags); return the info written to ``export_info.json``."""
    _check_arguments(args)
    embedder = None
    if args.complete is not None:  # load the model first: a missing folder fails before any work
        from .embedder import BooruEmbedder

        embedder = BooruEmbedder.from_pretrained(args.complete)
    data = load_data_dir(args.dataset)
    splits = list(data) if args.split == "all" else [args.split]
    if args.split != "all" and args.split not in data:
        raise UsageError(f"--split {args.split!r} is not in {args.dataset} (splits: {', '.join(data)})")
    tokenizer_dir = args.tokenizer or args.complete
    normalizer = load_tokenizer(tokenizer_dir) if tokenizer_dir else TagNormalizer()
    if args.implications != "keep" and tokenizer_dir is None:
        raise UsageError(f"--implications {args.implications} needs --tokenizer DIR (its implication table)")
    thresholds = score_thresholds(data) if args.score_words else None
    exporter = CaptionExporter(args, normalizer, embedder, thresholds)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    writer = CaptionWriter(output, args.format, args.extension)
    added_handle = (output / ADDED_FILE).open("w", encoding="utf-8") if embedder is not None else None
    model_added: Counter = Counter()
    posts_completed = 0
    complete = False
    total = sum(len(data[name]) for name in splits)
    try:
        for rows in _normalized_batches(exporter, _posts(data, splits, BATCH_ROWS), total):
            for (post, _), (caption, result, added) in zip(rows, exporter.complete(rows)):
                writer.write(post["id"], caption, {"rating": result.rating, "score": post.get("score")})
                if added:
                    added_handle.write(json.dumps({"id": post["id"], "added": [
                        {"tag": t, "probability": round(p, 6)} for t, p in added]}, ensure_ascii=False) + "\n")
                    model_added.update(tag for tag, _ in added)
                    posts_completed += 1
        complete = True
    finally:
        writer.close(complete)
        if added_handle is not None:
            added_handle.close()
    info = {
        "data_dir": str(args.dataset), "splits": splits, "format": args.format, "style": args.style,
        "order": category_order(exporter.order), "separator": args.separator, "implications": args.implications,
        "tokenizer": str(tokenizer_dir) if tokenizer_dir else None, "rating_words": args.rating_words,
        "score_thresholds": thresholds, **dict(exporter.counts),
    }
    if embedder is not None:
        info.update(complete=str(args.complete), threshold=args.threshold, posts_completed=posts_completed,
                    model_tags_added=sum(model_added.values()), model_tags_added_by_tag=dict(model_added.most_common()))
    (output / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return info


def _check_arguments(args: argparse.Namespace) -> None:
    """UsageError for flags that do not fit together, before any work."""
    parse_order(args.order)
    if args.extension not in EXTENSIONS:
        raise UsageError(f"--extension must be one of {', '.join(EXTENSIONS)}, got {args.extension!r}")
    if args.complete is None and args.threshold is not None:
        raise UsageError("--threshold goes with --complete MODEL_DIR")
    if args.complete is not None:
        if args.threshold is None:
            raise UsageError("--complete needs --threshold P (a probability in (0, 1])")
        if not 0.0 < args.threshold <= 1.0:
            raise UsageError(f"--threshold must be in (0, 1], got {args.threshold}")
        if not (Path(args.complete) / "config.json").is_file():
            raise UsageError(f"--complete: not a model folder (no config.json): {args.complete}")
    if args.tokenizer is not None and not (Path(args.tokenizer) / "vocab.json").is_file():
        raise UsageError(f"--tokenizer: not a tokenizer or model folder (no vocab.json): {args.tokenizer}")


def add_export_captions_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed export-captions``."""
    parser.add_argument("dataset", metavar="DATA_DIR", help="dataset folder written by build-dataset")
    parser.add_argument("--output", required=True, metavar="OUT", help="folder for the captions and reports")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="kohya-json: OUT/metadata.json {id: {tags}}; txt: OUT/<id>.txt; jsonl: OUT/captions.jsonl")
    parser.add_argument("--split", default="all", help="train, test or all (default: all)")
    parser.add_argument("--order", help="category order, comma separated (default: character,copyright,artist,general,meta)")
    parser.add_argument("--separator", default=", ", help="between tags (default: ', ')")
    add_normalization_flags(parser)
    parser.add_argument("--tokenizer", metavar="DIR",
                        help="tokenizer or model folder: aliases, implications, categories (needed by --implications)")
    parser.add_argument("--rating-words", action="store_true", help="start with the rating: general, sensitive, questionable, explicit")
    parser.add_argument("--score-words", action="store_true", help="add low_score / average_score / high_score (thirds of train)")
    parser.add_argument("--complete", metavar="MODEL_DIR", help="add tags the model suggests (needs --threshold)")
    parser.add_argument("--threshold", type=float, metavar="P", help="with --complete: minimum suggestion probability")
    parser.add_argument("--extension", default=".txt", help="with --format txt: .txt (default) or .caption")


def run_export_captions(args: argparse.Namespace) -> int:
    """Run ``booru-embed export-captions``."""
    info = export_captions(args)
    print(f"wrote {info['posts']} captions ({args.format}) to {args.output}: "
          + ", ".join(f"{key} {info[key]}" for key in CHANGE_KEYS if key != "posts"))
    if "model_tags_added" in info:
        print(f"model added {info['model_tags_added']} tags to {info['posts_completed']} posts (see {ADDED_FILE})")
    return 0
