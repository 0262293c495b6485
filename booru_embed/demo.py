"""`booru-embed demo`: the whole pipeline on a generated corpus, offline, in minutes on a laptop CPU.

generate corpus -> build dataset -> analyze -> build tokenizer -> train `tiny` -> evaluate (model vs
baseline) -> reload the saved folder with AutoModel in a fresh process -> suggest tags for posts whose
answers are known. The corpus is `danbooru-pairs` (Danbooru's real associations, from the shared pair
table or the copy shipped in the package), so the answers are real: a character's general partners
on Danbooru, the model's suggestions beside the related-tags baseline's (``demo_partners.py``).
``--setting small`` keeps the earlier made-up corpus (60 characters with invented traits).
Every stage runs the same code as its `booru-embed` command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import UsageError

MARKER = "demo.json"
STAGES = ("generate", "build", "analyze", "tokenizer", "train", "evaluate", "suggest")
# Folders and files the demo writes inside its workdir (and may replace on a re-run).
OUTPUTS = ("corpus", "data", "report", "tokenizer", "model", "metrics.json", MARKER)
# The demo's corpus: "danbooru-pairs" (real associations) or "small", smaller in variety than the
# generator's default (60 characters, 800 general tags, ~10 general tags a post) so that `tiny` learns
# who wears what within minutes on 2 CPU cores.
DEMO_SETTINGS = ("danbooru-pairs", "small")
DEMO_SPEC = {"num_copyrights": 12, "num_characters": 60, "num_artists": 60, "num_general": 800, "general_median": 10.0}
# The demo trains `tiny`'s recipe (the `training` block of hub_configs/tiny.json) cut to 300 steps, about
# two epochs of 20000 posts; training skips its own final evaluation (the evaluate stage follows).
DEMO_MAX_STEPS = 300
DEMO_TRAINING = ["--eval-posts", "0"]


def _prepare_workdir(workdir: Path) -> None:
    """Create ``workdir``; clear a previous demo's outputs, refuse a non-empty folder that is not one."""
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} is a file")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise UsageError(f"--workdir {workdir} is not empty and holds no earlier demo: choose another folder")
        for name in OUTPUTS:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)


def _stage(title: str, argv: list[str]) -> None:
    """Run one `booru-embed` command in this process; print its title and time; raise if it fails."""
    from .cli import main

    print(f"\n=== {title}: booru-embed {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise UsageError(f"demo stage '{title}' failed (exit code {code})")
    print(f"--- {title}: {time.perf_counter() - start:.1f} s", flush=True)


def write_implications(truth_json: Path, output: Path) -> Path:
    """Write the generator's implication pairs as the TSV (``antecedent<TAB>consequent``) build-tokenizer reads."""
    truth = json.loads(truth_json.read_text(encoding="utf-8"))
    lines = ["antecedent\tconsequent"] + [f"{a}\t{c}" for a, c in truth.get("implications", [])]
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return output


def known_answer_posts(truth: dict, count: int = 3, popularity: dict[str, int] | None = None) -> list[dict]:
    """Posts whose missing tags the generator knows: a character with its copyright, traits removed.

    Picks characters with traits; with ``popularity`` (tag -> training count) only those it lists,
    the most frequent first (the model has seen them most), else the ones with the most traits.
    """
    characters = [(name, info) for name, info in truth["characters"].items() if info["traits"]]
    if popularity is not None:
        characters = sorted((item for item in characters if popularity.get(item[0])),
                            key=lambda item: (-popularity[item[0]], item[0]))
    else:
        characters.sort(key=lambda item: (-len(item[1]["traits"]), item[0]))
    cases = []
    for name, info in characters[:count]:
        tags = {"character": [name], "copyright": [info["copyright"]], "general": ["solo"]}
        cases.append({"tags": tags, "expected": sorted(info["traits"])})
    return cases


def show_known_answers(model_dir: str | Path, truth_json: str | Path, top_k: int = 10,
                       data_dir: str | Path | None = None) -> float:
    """Load ``model_dir`` (AutoModel check, then BooruEmbedder), print suggestions; return the trait recall,
    or, for a ``danbooru-pairs`` truth with ``data_dir``, the model's precision@10 against the real partners."""
    from transformers import AutoModel
    from transformers.utils import logging

    from .embedder import BooruEmbedder

    logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=True)
    print(f"reloaded {model_dir} with AutoModel: {type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    embedder = BooruEmbedder.from_pretrained(model_dir)
    truth = json.loads(Path(truth_json).read_text(encoding="utf-8"))
    if data_dir is not None and truth.get("setting") == "danbooru-pairs":
        from .demo_partners import show_partners

        return show_partners(embedder, truth, data_dir)["model"]
    found = total = 0
    tokenizer = embedder.tokenizer
    popularity = {tokenizer.convert_ids_to_tokens(i): tokenizer.token_counts[i] for i in tokenizer.tag_token_ids}
    for case in known_answer_posts(truth, popularity=popularity):
        suggestions = embedder.suggest(case["tags"], top_k=top_k, categories=["general"])
        expected = set(case["expected"])
        hits = [tag for tag, _ in suggestions if tag in expected]
        found, total = found + len(hits), total + len(expected)
        shown = ", ".join(f"{tag}{'*' if tag in expected else ''} {score:.3f}" for tag, score in suggestions)
        print(f"\npost: {case['tags']}\n  known traits: {', '.join(case['expected'])}")
        print(f"  suggested (general, top {top_k}; * = a known trait): {shown}")
        print(f"  traits recovered: {len(hits)}/{len(expected)}")
    recall = found / total if total else 0.0
    print(f"\ntraits recovered overall: {found}/{total} ({recall:.0%})")
    return recall


def _generate(paths: dict[str, Path], posts: int, seed: int, setting: str) -> None:
    """Write the demo corpus of ``setting`` (``DEMO_SETTINGS``), its ground truth and the implication TSV."""
    from .data.synthetic import CorpusSpec, default_tag_data, generate_corpus
    from .data.synthetic_settings import setting as named_setting

    print(f"=== generate corpus ({setting}): {posts} posts -> {paths['corpus_csv']}", flush=True)
    paths["corpus"].mkdir()
    spec = CorpusSpec(**DEMO_SPEC) if setting == "small" else named_setting(setting)
    truth = generate_corpus(paths["corpus_csv"], posts, seed=seed, tag_data=default_tag_data(), spec=spec)
    write_implications(Path(truth), paths["implications"])


def _reload_and_suggest(paths: dict[str, Path]) -> None:
    """Add the sentence-transformers files, then load the model folder in a fresh process and suggest."""
    from .st_compat import write_sentence_transformers_files

    write_sentence_transformers_files(paths["model"])
    print("\n=== reload in a fresh process and suggest", flush=True)
    script = ("import sys; from booru_embed.demo import show_known_answers; "
              "show_known_answers(sys.argv[1], sys.argv[2], data_dir=sys.argv[3])")
    subprocess.run([sys.executable, "-c", script, str(paths["model"]), str(paths["truth"]), str(paths["data"])], check=True)


def run_demo_pipeline(workdir: Path, posts: int, max_steps: int = DEMO_MAX_STEPS, seed: int = 0,
                      stop_after: str = "suggest", setting: str = DEMO_SETTINGS[0]) -> dict[str, str]:
    """Run the stages into ``workdir``, up to and including ``stop_after``; return the output paths by name."""
    if stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {', '.join(STAGES)}, got {stop_after!r}")
    _prepare_workdir(workdir)
    paths = {name: workdir / name for name in ("corpus", "data", "report", "tokenizer", "model")}
    paths.update(corpus_csv=workdir / "corpus" / "posts.csv", truth=workdir / "corpus" / "posts.truth.json",
                 implications=workdir / "corpus" / "implications.tsv", metrics=workdir / "metrics.json")
    (workdir / MARKER).write_text(json.dumps({"posts": posts, "max_steps": max_steps, "seed": seed,
                                              "setting": setting}) + "\n")
    data, tokenizer, model = str(paths["data"]), str(paths["tokenizer"]), str(paths["model"])
    stages = {
        "generate": lambda: _generate(paths, posts, seed, setting),
        "build": lambda: _stage("build dataset", ["build-dataset", str(paths["corpus_csv"]), "--output", data]),
        "analyze": lambda: _stage("analyze", ["analyze", data, "--output", str(paths["report"])]),
        "tokenizer": lambda: _stage("build tokenizer", ["build-tokenizer", data, "--output", tokenizer,
                                                        "--implications", str(paths["implications"])]),
        "train": lambda: _stage("train tiny", [
            "train", "--config", "tiny", "--dataset", data, "--tokenizer", tokenizer,
            "--output", model, "--seed", str(seed), "--max-steps", str(max_steps), *DEMO_TRAINING]),
        "evaluate": lambda: _stage("evaluate", [
            "evaluate", model, "--dataset", data, "--output", str(paths["metrics"]),
            "--implications", str(paths["implications"]), "--truth", str(paths["truth"])]),
        "suggest": lambda: _reload_and_suggest(paths),
    }
    timings = {}
    for name, run in stages.items():
        start = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - start
        if name == stop_after:
            break
    print("\nstage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    return {name: str(path) for name, path in paths.items() if path.exists()}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed demo``."""
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                        help="folder for every output (default: runs/demo); an earlier demo there is replaced")
    parser.add_argument("--posts", type=int, default=20000, help="posts in the generated corpus (default: 20000)")
    parser.add_argument("--max-steps", type=int, default=DEMO_MAX_STEPS,
                        help=f"training steps of 64 posts (default: {DEMO_MAX_STEPS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus and of training")
    parser.add_argument("--stop-after", choices=STAGES, default=STAGES[-1],
                        help="last stage to run (default: all of them)")
    parser.add_argument("--setting", choices=DEMO_SETTINGS, default=DEMO_SETTINGS[0],
                        help="corpus: danbooru-pairs (real associations, the default) or small (made-up traits)")


def run_demo(args: argparse.Namespace) -> int:
    """Run ``booru-embed demo``."""
    if args.posts < 200:
        raise UsageError(f"--posts must be at least 200, got {args.posts}")
    if args.max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1, got {args.max_steps}")
    start = time.perf_counter()
    paths = run_demo_pipeline(args.workdir, args.posts, args.max_steps, args.seed, args.stop_after, args.setting)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs:")
    for name, path in paths.items():
        print(f"  {name:<13} {path}")
    return 0
