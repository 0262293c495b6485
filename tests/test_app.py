"""The app: its handlers on a tiny model (completion, panels, bad input), and the page in a headless browser."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from booru_embed import app
from booru_embed.cli import main
from booru_embed.embedder import BooruEmbedder
from tiny_model import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]

ALIASES = [("kitty_ears", "cat_ears"), ("longhair", "long_hair"), ("grin", "smile")]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), aliases=ALIASES)


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> BooruEmbedder:
    return BooruEmbedder.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def index(model_dir: Path):
    """A PostIndex of the tiny model's DATA_DIR (exact search), or None without faiss."""
    if importlib.util.find_spec("faiss") is None:
        return None
    from booru_embed.index import PostIndex, build_index

    build_index(model_dir, model_dir.parent / "data", model_dir.parent / "index", dim=32, kind="exact")
    return PostIndex.load(model_dir.parent / "index")


@pytest.fixture(scope="module")
def completer(embedder: BooruEmbedder) -> app.TagCompleter:
    return app.TagCompleter.from_tokenizer(embedder.tokenizer)


# ----------------------------------------------------------------------------------------------
# Completion
# ----------------------------------------------------------------------------------------------
def test_completion_is_every_tag_with_the_prefix_most_used_first(embedder, completer) -> None:
    tokenizer = embedder.tokenizer
    vocabulary = tokenizer.convert_ids_to_tokens(tokenizer.tag_token_ids)
    rows = completer.complete("a", limit=50)
    assert {row[0] for row in rows} == {tag for tag in vocabulary if tag.startswith("a")}
    counts = [row[2] for row in rows]
    assert counts == sorted(counts, reverse=True)
    for tag, category, posts, typed in rows:
        index = tokenizer.tag_to_id(tag)
        assert (category, posts, typed) == (embedder.category_of(tag), tokenizer.token_counts[index], "")


def test_completion_limit_keeps_the_most_used(completer) -> None:
    everything = completer.complete("a", limit=50)
    assert len(everything) > 3
    assert completer.complete("a", limit=3) == everything[:3]
    with pytest.raises(ValueError, match="limit"):
        completer.complete("a", limit=0)


def test_completion_resolves_aliases_to_the_canonical_tag(completer) -> None:
    assert completer.complete("kitty") == [["cat_ears", "general", completer.complete("cat_ears")[0][2], "kitty_ears"]]
    assert [row[0] for row in completer.complete("long")] == ["long_hair"]  # the tag and its alias: listed once
    assert completer.complete("long")[0][3] == ""  # the tag itself matched, so no alias is named
    assert completer.complete("Long Ha")[0][0] == "long_hair"  # spelling normalised like the tokenizer
    assert completer.complete("") == [] and completer.complete("zzz") == []


def test_completer_drops_aliases_of_tags_outside_the_vocabulary() -> None:
    completer = app.TagCompleter(["b_tag", "a_tag"], [5, 9], ["general", "meta"],
                                 {"x_alias": "a_tag", "y_alias": "missing", "z_chain": "x_alias"})
    assert completer.complete("y") == []
    assert completer.complete("z") == [["a_tag", "meta", 9, "z_chain"]]
    assert len(completer) == 4
    with pytest.raises(ValueError, match="differ in length"):
        app.TagCompleter(["a"], [1, 2], ["general"])


def test_completion_follows_the_last_tag_and_accepting_keeps_the_style(completer) -> None:
    assert app.current_word("1girl cat_e") == "cat_e"
    assert app.current_word("1girl ") == ""
    assert app.current_word("1girl, long ha") == "long ha"
    assert app.current_word("solo, \\(nothing") == "(nothing"
    assert app.complete_tags(completer, "solo kitty")[0][0] == "cat_ears"
    assert app.complete_tags(completer, "solo ") == []
    assert app.accept_completion("solo kitty", "cat_ears") == "solo cat_ears "
    assert app.accept_completion("", "solo") == "solo "
    assert app.accept_completion("solo ", "smile") == "solo smile "
    assert app.accept_completion("solo, long ha", "long_hair") == "solo, long hair, "
    assert app.accept_completion("solo, x", "hatsune_miku_(append)") == "solo, hatsune miku \\(append\\), "
    assert app.current_word("solo, ((long ha") == "long ha" and app.current_word("solo [kitty") == "kitty"
    assert app.accept_completion("solo, ((long ha", "long_hair") == "solo, ((long hair, "
    assert app.accept_completion("solo [kitty", "cat_ears") == "solo [cat_ears "


def test_completion_of_a_real_sized_vocabulary(shared_tag_data) -> None:
    import csv

    with open(shared_tag_data / "tags.csv", encoding="utf-8", newline="") as handle:
        rows = [(name, int(count)) for name, _, count, _ in csv.reader(handle)]
    names, counts = zip(*rows)
    completer = app.TagCompleter(names, counts, ["general"] * len(names))
    found = completer.complete("long_h", limit=5)
    expected = sorted((row for row in rows if row[0].startswith("long_h")), key=lambda r: -r[1])[:5]
    assert [(row[0], row[2]) for row in found] == expected


# ----------------------------------------------------------------------------------------------
# Model panels
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   ", " , ,"])
def test_empty_input_gives_a_message_everywhere(embedder, text) -> None:
    assert app.suggestion_rows(embedder, text) == ([], app.EMPTY_MESSAGE)
    assert app.normalized_view(embedder, text) == ("", "", [], app.EMPTY_MESSAGE)
    assert app.plausibility_rows(embedder, text) == ([], app.EMPTY_MESSAGE)


def test_suggestions_are_the_embedders_per_category(embedder) -> None:
    rows, message = app.suggestion_rows(embedder, "1girl solo kitty_ears", top_k=2)
    assert message == ""
    for category in ("general", "artist", "copyright", "character", "meta"):
        expected = embedder.suggest("1girl solo kitty_ears", top_k=2, categories=[category])
        assert [(tag, score) for c, tag, score in rows if c == category] == [(t, round(s, 4)) for t, s in expected]
    assert not {"1girl", "solo", "cat_ears"} & {row[1] for row in rows}


def test_unknown_tags_are_named_not_fatal(embedder) -> None:
    rows, message = app.suggestion_rows(embedder, "1girl mystery_tag")
    assert rows and "`mystery_tag`" in message and "unknown" in message
    rows, message = app.suggestion_rows(embedder, "only_unknown_here")
    assert rows and "`only_unknown_here`" in message
    tags, _, by_category, note = app.normalized_view(embedder, "mystery_tag 1girl")
    assert tags == "1girl mystery_tag" and ["unknown", "mystery_tag"] in by_category and "`mystery_tag`" in note


def test_bad_input_is_a_message(embedder) -> None:
    assert app.normalized_view(embedder, "1girl rating:g rating:e") == ("", "", [], "two ratings in one tag set: rating:g and rating:e")
    assert app.normalized_view(embedder, "1girl", "sometimes")[3].startswith("implications must be one of")


def test_normalized_view_is_tokenizer_normalize(embedder) -> None:
    text = "solo, kitty ears, 1girl, solo"
    expected = embedder.normalize(text, implications="complete")
    tags, prompt, rows, note = app.normalized_view(embedder, text, "complete")
    assert (tags, prompt) == (expected.to_string("tags"), expected.to_string("prompt"))
    assert rows == [[category, " ".join(values)] for category, values in expected.tags.items() if values]
    assert "`kitty_ears` → `cat_ears`" in note and "Implied tags added: `animal_ears`, `animal_features`" in note
    assert "Duplicates dropped: 1" in note


def test_plausibility_is_score_tags_least_first(embedder) -> None:
    rows, message = app.plausibility_rows(embedder, "1girl solo cat_ears mystery_tag")
    scores = embedder.score_tags("1girl solo cat_ears mystery_tag")
    assert [row[0] for row in rows] == sorted((t for t, s in scores.items() if s is not None), key=scores.get)
    assert [row[2] for row in rows] == sorted(row[2] for row in rows)
    assert "`mystery_tag`" in message and "not scored" in message


def test_ignored_pieces_and_weights_are_shown_beside_unknown_tags(embedder) -> None:
    text = "(1girl:1.2), [solo], <lora:detail:0.8>, embedding:bad_hands, masterpiece"
    tags, prompt, _, note = app.normalized_view(embedder, text)
    assert tags.split() == embedder.normalize("1girl solo masterpiece").to_string().split()
    assert "(1girl:1.2)" in prompt.split(", ") and "[solo]" in prompt.split(", ")
    assert "Not in the vocabulary (kept): `masterpiece`" in note and "`1girl` 1.2" in note
    assert "Ignored, not tags: `<lora:detail:0.8>` (LoRA or network, not a tag), `embedding:bad_hands`" in note
    for _, message in (app.suggestion_rows(embedder, text), app.plausibility_rows(embedder, text)):
        assert "`masterpiece`" in message and "Ignored, not tags: `<lora:detail:0.8>`" in message


def test_similar_posts_are_the_index_hits(embedder, index) -> None:
    if index is None:
        pytest.skip("faiss-cpu (the index extra) is not installed")
    from booru_embed.index import post_tags
    from tiny_model import tiny_posts

    post = tiny_posts()[7]
    rows, message = app.similar_rows(embedder, index, post_tags(post), top_k=4)
    hits = index.search(post_tags(post), top_k=4)[0]
    assert message == "" and rows == [[hit.id, round(hit.score, 4), hit.tags] for hit in hits]
    assert rows[0][0] == 7 and rows[0][2] == post_tags(post)  # a post finds itself first
    assert app.similar_rows(embedder, index, "") == ([], app.EMPTY_MESSAGE)
    rows, message = app.similar_rows(embedder, index, "1girl mystery_tag")
    assert len(rows) == app.SIMILAR_TOP_K and "`mystery_tag`" in message


def test_app_command_reports_bad_usage_in_one_line(model_dir, tmp_path, capsys) -> None:
    assert main(["app", str(model_dir), "--port", "70000"]) == 2
    assert "--port must be from 1 to 65535" in capsys.readouterr().err
    assert main(["app", str(tmp_path / "nowhere")]) == 2
    if importlib.util.find_spec("gradio") is None:
        assert "pip install booru-embed[app]" in capsys.readouterr().err
        return
    assert "not a model folder" in capsys.readouterr().err
    if importlib.util.find_spec("faiss") is not None:
        assert main(["app", str(model_dir), "--index", str(tmp_path)]) == 2
        assert "is not an index folder" in capsys.readouterr().err


def test_missing_gradio_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    with pytest.raises(app.UsageError, match=r"pip install booru-embed\[app\]"):
        app.import_gradio()


# ----------------------------------------------------------------------------------------------
# The page in a headless browser
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(embedder, index):
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio is not installed (pip install booru-embed[app])")
    demo = app.build_app(embedder, index)
    port = _free_port()
    app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_page_in_a_headless_browser(page_url, embedder, index, completer, tmp_path) -> None:
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed")
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); browsers are never downloaded")
    from playwright.sync_api import expect, sync_playwright

    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(page_url) else None)
        page.goto(page_url)
        box = page.locator("#tags textarea")
        box.press_sequentially("1girl kitty")
        completion = page.locator("#completions").get_by_test_id("cell-0-0")  # first row, first column
        expect(completion).to_have_text(completer.complete("kitty")[0][0], timeout=20_000)
        completion.click()
        expect(box).to_have_value("1girl cat_ears ", timeout=20_000)
        box.press_sequentially("solo mystery_tag")
        page.locator("#analyse").click()
        text = "1girl cat_ears solo mystery_tag"
        expect(page.locator("#normalized textarea")).to_have_value(app.normalized_view(embedder, text)[0], timeout=20_000)
        suggestions = page.locator("#suggestions")
        for _, tag, _ in app.suggestion_rows(embedder, text)[0][:3]:
            expect(suggestions.get_by_role("gridcell", name=tag, exact=True).first).to_be_visible()
        expect(page.get_by_role("gridcell", name="mystery_tag", exact=True)).to_be_visible()
        least = app.plausibility_rows(embedder, text)[0][0][0]
        expect(page.locator("#plausibility").get_by_test_id("cell-0-0")).to_have_text(least)
        if index is not None:
            first = app.similar_rows(embedder, index, text)[0][0]
            expect(page.locator("#similar").get_by_test_id("cell-0-2")).to_have_text(first[2])
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
    assert outside == [], f"the page fetched from outside the app: {outside[:5]}"


def _space_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MODEL_DIR", None)
    env.pop("INDEX_DIR", None)
    return env


def test_space_entry_point_without_a_model_says_so() -> None:
    missing = subprocess.run([sys.executable, "app.py"], cwd=REPO_ROOT, env=_space_env(), capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "app.py: error: no model: give MODEL_DIR as an argument or an environment variable")
    extra = subprocess.run([sys.executable, "app.py", "a", "b", "c"], cwd=REPO_ROOT, env=_space_env(),
                           capture_output=True, text=True)
    assert extra.returncode == 2 and "usage: python app.py [MODEL_DIR [INDEX_DIR]]" in extra.stderr


@pytest.mark.slow  # a fresh process imports torch and gradio and loads the model: about 20 s on a shared CPU
def test_space_entry_point_serves_the_page(model_dir, index) -> None:
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio is not installed (pip install booru-embed[app])")
    env = _space_env()
    port = _free_port()
    env.update(MODEL_DIR=str(model_dir), GRADIO_SERVER_PORT=str(port))
    if index is not None:
        env["INDEX_DIR"] = str(index.folder)
    server = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, config = time.monotonic() + 60, None
        while config is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                    config = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert config is not None, f"app.py did not serve: {server.stderr.read() if server.poll() is not None else 'timeout'}"
        labels = {component.get("props", {}).get("label") for component in config["components"]}
        assert {"Tags", "Suggested tags", "Normalised tags", "Completions"} <= labels
        if index is not None:
            assert f"Similar posts ({len(index)} indexed)" in labels
    finally:
        server.terminate()
        server.wait(timeout=30)
