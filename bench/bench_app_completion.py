"""Latency of the app's tag completion on Danbooru's whole tag list, against a linear scan, in one process.

Reads ``tags.csv`` (every Danbooru tag with its post count, about 150k) and ``aliases.tsv`` of the tag
data folder, builds ``booru_embed.app.TagCompleter`` over them, and completes a fixed list of prefixes
(one to six characters, common and rare starts) with:
  scan      every name tested with ``str.startswith``, then the most used (the baseline)
  bisect    TagCompleter.complete: the matching names are one slice of the sorted list
Prints the mean and worst time per keystroke and the ratio to the baseline; checks both give the same rows.

    python bench/bench_app_completion.py [--tag-data ../shared/data/danbooru-2025-05] [--repeat 20]
"""

from __future__ import annotations

import argparse
import csv
import heapq
import time
from pathlib import Path

from booru_embed.app import COMPLETION_LIMIT, TagCompleter
from booru_embed.modeling.categories_booru_embed import DANBOORU_CATEGORY_NAMES
from booru_embed.modeling.normalization_booru_embed import normalize_tag
from booru_embed.data.tag_tables import load_aliases

PREFIXES = ["1", "a", "s", "lo", "long_h", "hatsu", "blue_", "kitty", "zz", "holo", "^", "girls'_f"]


def read_tags(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """Names, post counts and category names of ``tags.csv`` (columns name, category, count, aliases)."""
    names, counts, categories = [], [], []
    with open(folder / "tags.csv", encoding="utf-8", newline="") as handle:
        for name, category, count, _ in csv.reader(handle):
            names.append(name)
            counts.append(int(count))
            categories.append(DANBOORU_CATEGORY_NAMES.get(int(category), "general"))
    return names, counts, categories


def scan(completer: TagCompleter, prefix: str, limit: int) -> list[list]:
    """The baseline: test every name, keep the most used tag per match (direct matches beat aliases)."""
    prefix = normalize_tag(prefix)
    typed: dict[int, str] = {}
    for name, target in zip(completer._names, completer._targets):
        if name.startswith(prefix) and typed.get(target) != "":
            typed[target] = "" if name == completer.tags[target] else typed.get(target, name)
    best = heapq.nlargest(limit, typed, key=lambda t: (completer.counts[t], -t))
    return [[completer.tags[t], completer.categories[t], completer.counts[t], typed[t]] for t in best]


def timed(function, repeat: int) -> dict[str, list[float]]:
    """Milliseconds of ``function(prefix)`` for every prefix, ``repeat`` rounds each."""
    times: dict[str, list[float]] = {prefix: [] for prefix in PREFIXES}
    for _ in range(repeat):
        for prefix in PREFIXES:
            started = time.perf_counter()
            function(prefix)
            times[prefix].append((time.perf_counter() - started) * 1000)
    return times


def summary(times: dict[str, list[float]]) -> tuple[float, float]:
    """Mean and worst milliseconds over every call."""
    every = [t for values in times.values() for t in values]
    return sum(every) / len(every), max(every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/danbooru-2025-05")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if not (args.tag_data / "tags.csv").is_file():
        raise SystemExit(f"bench_app_completion: no tags.csv in {args.tag_data} (give --tag-data DIR)")
    tags, aliases = read_tags(args.tag_data), load_aliases(args.tag_data / "aliases.tsv")
    started = time.perf_counter()
    completer = TagCompleter(*tags, aliases)
    build = time.perf_counter() - started
    print(f"{len(completer.tags)} tags + {len(completer) - len(completer.tags)} aliases; "
          f"TagCompleter built in {build:.2f} s; {len(PREFIXES)} prefixes x {args.repeat} rounds, top {COMPLETION_LIMIT}")
    for prefix in PREFIXES:
        assert completer.complete(prefix) == scan(completer, prefix, COMPLETION_LIMIT), prefix
    base_mean, base_worst = summary(timed(lambda p: scan(completer, p, COMPLETION_LIMIT), max(1, args.repeat // 10)))
    times = timed(completer.complete, args.repeat)
    mean, worst = summary(times)
    slowest = max(PREFIXES, key=lambda prefix: sum(times[prefix]))
    print(f"{'method':<8} {'mean ms':>9} {'worst ms':>9} {'speed-up':>9}")
    print(f"{'scan':<8} {base_mean:>9.2f} {base_worst:>9.2f} {1.0:>8.1f}x")
    print(f"{'bisect':<8} {mean:>9.3f} {worst:>9.3f} {base_mean / mean:>8.1f}x")
    print(f"slowest prefix for bisect: {slowest!r}, {sum(times[slowest]) / len(times[slowest]):.2f} ms on average "
          f"({len(completer.complete(slowest, limit=len(completer)))} tags start with it)")

if __name__ == "__main__":
    main()
