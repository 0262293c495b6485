"""The ``booru-embed app`` page: type a tag set, see suggestions, implausible tags, normal forms, similar posts.

Two layers. The handlers (``complete_tags``, ``accept_completion``, ``suggestion_rows``,
``plausibility_rows``, ``normalized_view``, ``similar_rows``) take the typed text and return plain Python
data (rows as lists, a message string), so they are tested without a browser and never raise for what a
user can type: an empty box or unknown tags become a message on the page, not a traceback.
``build_app`` only places Gradio components and wires them to the handlers; ``launch`` serves the page
locally. Gradio is an optional extra (``pip install booru-embed[app]``), imported only here and only
when the page is built; analytics are switched off before the import and no share link is ever made.

Completion: a vocabulary can hold 150k tags, far too many for a dropdown. ``TagCompleter`` keeps every
tag and alias in one sorted list; the tags starting with the word being typed are one contiguous slice
found by ``bisect``, and the most used of them (post count from the vocabulary) are shown.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .modeling.categories_booru_embed import CATEGORY_NAMES, TAG_CATEGORIES
from .modeling.normalization_booru_embed import IMPLICATION_MODES, normalize_tag, prompt_tag, resolve_alias, unescape

if TYPE_CHECKING:
    import gradio as gr

    from .embedder import BooruEmbedder

COMPLETION_LIMIT = 20  # suggestions shown while typing: a screenful, enough to find a tag by its start
DEFAULT_TOP_K = 5  # suggestions per category on the page
SIMILAR_TOP_K = 10
DEFAULT_PORT = 7860  # Gradio's usual port
EMPTY_MESSAGE = "Type at least one tag, e.g. `1girl solo long_hair` or `1girl, long hair`."
COMPLETION_HEADERS = ["tag", "category", "posts", "typed"]
SUGGESTION_HEADERS = ["category", "tag", "score"]
PLAUSIBILITY_HEADERS = ["tag", "category", "fit"]
NORMALIZED_HEADERS = ["category", "tags"]
SIMILAR_HEADERS = ["post", "similarity", "tags"]

Rows = list[list[Any]]


# ----------------------------------------------------------------------------------------------
# Completion
# ----------------------------------------------------------------------------------------------
class TagCompleter:
    """Prefix completion over a vocabulary's tags and aliases, most used first.

    ``complete("long_h")`` returns rows ``[tag, category, posts, typed]``: ``tag`` is the canonical
    vocabulary tag, ``typed`` the alias that matched the prefix ("" when the tag itself matched). A tag
    reachable by several names is listed once.
    """

    def __init__(self, tags: Sequence[str], counts: Sequence[int], categories: Sequence[str],
                 aliases: Mapping[str, str] | None = None) -> None:
        """Index ``tags`` (with their post ``counts`` and category names) and the alias antecedents of ``aliases``.

        An alias whose canonical tag (followed through chains) is not among ``tags`` is left out.
        """
        if not len(tags) == len(counts) == len(categories):
            raise ValueError(f"tags, counts and categories differ in length: {len(tags)}, {len(counts)}, {len(categories)}")
        self.tags, self.counts, self.categories = list(tags), [int(c) for c in counts], list(categories)
        position = {tag: index for index, tag in enumerate(self.tags)}
        names = [(tag, index) for index, tag in enumerate(self.tags)]
        for antecedent in aliases or {}:
            canonical = position.get(resolve_alias(antecedent, aliases))
            if canonical is not None and antecedent not in position:
                names.append((antecedent, canonical))
        names.sort()
        self._names = [name for name, _ in names]
        self._targets = [target for _, target in names]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TagCompleter:
        """The completer of a booru-embed tokenizer: its vocabulary tags, their counts and its aliases."""
        ids = tokenizer.tag_token_ids
        return cls(tokenizer.convert_ids_to_tokens(ids), [tokenizer.token_counts[i] for i in ids],
                   [CATEGORY_NAMES[tokenizer.token_categories[i]] for i in ids], tokenizer.aliases)

    def __len__(self) -> int:
        """Number of names completed: tags and aliases."""
        return len(self._names)

    def complete(self, prefix: str, limit: int = COMPLETION_LIMIT) -> Rows:
        """The ``limit`` most used tags whose name or alias starts with ``prefix`` (spelling normalised)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        prefix = normalize_tag(prefix)
        if not prefix:
            return []
        start = bisect.bisect_left(self._names, prefix)
        stop = bisect.bisect_left(self._names, prefix + "\U0010ffff", lo=start)  # past every name with the prefix
        typed: dict[int, str] = {}
        for position in range(start, stop):
            target, name = self._targets[position], self._names[position]
            if typed.get(target) != "":  # a direct match of the tag beats any alias of it
                typed[target] = "" if name == self.tags[target] else typed.get(target, name)
        best = heapq.nlargest(limit, typed, key=lambda t: (self.counts[t], -t))
        return [[self.tags[t], self.categories[t], self.counts[t], typed[t]] for t in best]


def _typed_tail(text: str) -> tuple[str, str, str]:
    """``text`` cut as (head, emphasis openers typed, the tag being typed): after the last comma in a prompt,
    else the last word (the tag is "" after a separator)."""
    if "," in text:
        head, tail = text.rsplit(",", 1)
        tail = tail.lstrip()
    elif not text or text[-1].isspace():
        return text, "", ""
    else:
        tail = text.split()[-1]
        head = text[: len(text) - len(tail)]
    tag = tail.lstrip("([{")
    return head, tail[: len(tail) - len(tag)], tag


def current_word(text: str) -> str:
    """The tag being typed: the text after the last comma (prompt style) or the last word, after any emphasis
    brackets; "" after a separator."""
    return unescape(_typed_tail(text)[2])


def complete_tags(completer: TagCompleter, text: str, limit: int = COMPLETION_LIMIT) -> Rows:
    """Completion rows (``COMPLETION_HEADERS``) for the tag being typed at the end of ``text``."""
    return completer.complete(current_word(text or ""), limit)


def accept_completion(text: str, tag: str) -> str:
    """``text`` with the tag being typed replaced by ``tag`` and a separator after it, in the text's style.

    A prompt-style text (it holds a comma) gets ``prompt_tag(tag)`` and ``", "``; a tag string gets
    ``tag`` and a space. Emphasis brackets typed before the tag stay.
    """
    text = text or ""
    head, openers, _ = _typed_tail(text)
    if "," in text:
        return f"{head}, {openers}{prompt_tag(tag)}, "
    return f"{head}{openers}{tag} "


# ----------------------------------------------------------------------------------------------
# Model panels: text in, (rows, message) out
# ----------------------------------------------------------------------------------------------
def _is_empty(text: str | None) -> bool:
    return not (text or "").replace(",", " ").split()


def _unknown_note(embedder: BooruEmbedder, text: str, effect: str) -> str:
    """Sentences naming the tags of ``text`` outside the vocabulary and the pieces that are no tags, with why
    ("" when there are none)."""
    notes = []
    unknown = embedder.unknown_tags(text)
    if unknown:
        notes.append(f"Not in the vocabulary ({effect}): {', '.join(f'`{t}`' for t in unknown)}.")
    ignored = embedder.ignored_items(text)
    if ignored:
        notes.append(f"Ignored, not tags: {', '.join(f'`{t}` ({why})' for t, why in ignored)}.")
    return " ".join(notes)


def suggestion_rows(embedder: BooruEmbedder, text: str, top_k: int = DEFAULT_TOP_K,
                    distinctive: bool = False) -> tuple[Rows, str]:
    """Suggested missing tags, ``top_k`` per tag category: rows ``[category, tag, score]`` and a message.

    ``BooruEmbedder.suggest`` per category (so every category gets its own best tags); implied tags come
    first with score 1.0 when the model has an implication table. ``distinctive`` as in ``suggest``.
    """
    if _is_empty(text):
        return [], EMPTY_MESSAGE
    rows: Rows = []
    try:
        for category in TAG_CATEGORIES:
            for tag, score in embedder.suggest(text, top_k=int(top_k), categories=[category], distinctive=distinctive):
                rows.append([category, tag, round(score, 4)])
    except ValueError as error:
        return [], str(error)
    return rows, _unknown_note(embedder, text, "read as unknown tags; the others decide")


def plausibility_rows(embedder: BooruEmbedder, text: str, distinctive: bool = False) -> tuple[Rows, str]:
    """The present tags, least plausible first: rows ``[tag, category, fit]`` and a message.

    ``fit`` is ``BooruEmbedder.score_tags``: how strongly the rest of the set predicts the tag. Tags outside
    the vocabulary have no fit; the message names them.
    """
    if _is_empty(text):
        return [], EMPTY_MESSAGE
    try:
        scores = embedder.score_tags(text, distinctive=distinctive)
    except ValueError as error:
        return [], str(error)
    scored = sorted(((fit, tag) for tag, fit in scores.items() if fit is not None))
    rows = [[tag, embedder.category_of(tag), round(fit, 4)] for fit, tag in scored]
    return rows, _unknown_note(embedder, text, "not scored")


def normalized_view(embedder: BooruEmbedder, text: str, implications: str = "keep") -> tuple[str, str, Rows, str]:
    """The normal form of ``text``: tag string, prompt string, rows ``[category, tags]`` and a message.

    ``implications`` is ``keep``, ``minimal`` or ``complete`` (``BooruEmbedder.normalize``). The message
    lists what normalising changed: aliases resolved, duplicates, implied tags added or removed, unknown tags.
    """
    if _is_empty(text):
        return "", "", [], EMPTY_MESSAGE
    if implications not in IMPLICATION_MODES:
        return "", "", [], f"implications must be one of {', '.join(IMPLICATION_MODES)}, got {implications!r}"
    try:
        result = embedder.normalize(text, implications=implications)
    except ValueError as error:
        return "", "", [], str(error)
    rows = [[category, " ".join(tags)] for category, tags in result.tags.items() if tags]
    changes = [("Aliases resolved", [f"`{a}` → `{c}`" for a, c in result.aliases.items()]),
               ("Not in the vocabulary (kept)", [f"`{t}`" for t in result.unknown]),
               ("Implied tags added", [f"`{t}`" for t in result.added]),
               ("Implied tags removed", [f"`{t}`" for t in result.removed]),
               ("Ignored, not tags", [f"`{t}` ({why})" for t, why in result.ignored]),
               ("Weights kept for the prompt", [f"`{t}` {w:g}" for t, w in result.weights.items()])]
    notes = [f"{label}: {', '.join(items)}." for label, items in changes if items]
    if result.duplicates:
        notes.append(f"Duplicates dropped: {result.duplicates}.")
    return result.to_string("tags"), result.to_string("prompt"), rows, " ".join(notes)


def similar_rows(embedder: BooruEmbedder, index: Any, text: str, top_k: int = SIMILAR_TOP_K) -> tuple[Rows, str]:
    """The indexed posts nearest to ``text``: rows ``[post id, similarity, tags]`` and a message.

    ``index`` is a ``booru_embed.index.PostIndex``, searched in its default mode (hybrid: dense + sparse
    tag vectors; dense for an index built without sparse vectors); the query is embedded with
    ``embedder``, so the page holds one model.
    """
    if _is_empty(text):
        return [], EMPTY_MESSAGE
    try:
        index.embedder = embedder
        hits = index.search(text, top_k=int(top_k))[0]
    except ValueError as error:
        return [], str(error)
    rows = [[hit.id, round(hit.score, 4), hit.tags] for hit in hits]
    return rows, _unknown_note(embedder, text, "read as unknown tags")


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------
def import_gradio() -> Any:
    """Gradio with analytics off; ``UsageError`` naming the extra when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise UsageError("the app needs Gradio: pip install booru-embed[app]") from None
    return gradio


def build_app(embedder: BooruEmbedder, index: Any = None, title: str = "booru-embed") -> gr.Blocks:
    """The page as a ``gr.Blocks`` wired to the handlers (``index``: a ``PostIndex`` for similar posts)."""
    gr = import_gradio()
    completer = TagCompleter.from_tokenizer(embedder.tokenizer)

    def table(headers: list[str], label: str, **kwargs: Any) -> gr.Dataframe:
        return gr.Dataframe(headers=headers, label=label, interactive=False, wrap=True, **kwargs)

    def analyze(text: str, top_k: int, distinctive: bool, implications: str) -> tuple[Any, ...]:
        suggestions, suggestion_note = suggestion_rows(embedder, text, top_k, distinctive)
        tags, prompt, normal_rows, normal_note = normalized_view(embedder, text, implications)
        outputs: list[Any] = [suggestions, suggestion_note, tags, prompt, normal_rows, normal_note,
                              *plausibility_rows(embedder, text, distinctive)]
        if index is not None:
            outputs += similar_rows(embedder, index, text)
        return tuple(outputs)

    def choose(text: str, event: gr.SelectData) -> tuple[str, Rows]:
        return accept_completion(text, str(event.row_value[0])), []

    choose.__annotations__["event"] = gr.SelectData  # Gradio finds its event argument by type, not by a string

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nType a Danbooru tag string or a prompt-style comma list; completions follow "
                    f"the last tag as you type ({len(completer)} tags and aliases; click one to add it).")
        with gr.Row():
            with gr.Column(scale=3):
                text = gr.Textbox(label="Tags", lines=2, elem_id="tags",
                                  placeholder="1girl solo long_hair  or  1girl, long hair, smile")
                with gr.Row():
                    top_k = gr.Slider(1, 20, value=DEFAULT_TOP_K, step=1, label="suggestions per category")
                    distinctive = gr.Checkbox(label="distinctive (typical of this set, not common everywhere)")
                    implications = gr.Radio(list(IMPLICATION_MODES), value="keep", label="implications")
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            completions = table(COMPLETION_HEADERS, "Completions", scale=2, elem_id="completions")
        with gr.Row():
            with gr.Column():
                suggestions = table(SUGGESTION_HEADERS, "Suggested tags", elem_id="suggestions")
                suggestion_note = gr.Markdown()
            with gr.Column():
                tags = gr.Textbox(label="Normalised tags", elem_id="normalized", buttons=["copy"])
                prompt = gr.Textbox(label="Normalised prompt", elem_id="prompt", buttons=["copy"])
                normal_rows = table(NORMALIZED_HEADERS, "By category")
                normal_note = gr.Markdown(elem_id="normal-note")
        with gr.Row():
            with gr.Column():
                plausibility = table(PLAUSIBILITY_HEADERS, "Least plausible tags first", elem_id="plausibility")
                plausibility_note = gr.Markdown()
            outputs = [suggestions, suggestion_note, tags, prompt, normal_rows, normal_note, plausibility, plausibility_note]
            if index is not None:
                with gr.Column():
                    outputs.append(table(SIMILAR_HEADERS, f"Similar posts ({len(index)} indexed)", elem_id="similar",
                                         column_widths=["15%", "15%", "70%"]))
                    outputs.append(gr.Markdown())
        text.input(lambda value: complete_tags(completer, value), text, completions,
                   show_progress="hidden", trigger_mode="always_last")
        completions.select(choose, text, [text, completions], show_progress="hidden")
        inputs = [text, top_k, distinctive, implications]
        button.click(analyze, inputs, outputs)
        text.submit(analyze, inputs, outputs)
    return demo


def load_app(model_dir: str | Path, index_dir: str | Path | None = None, device: str | None = None) -> gr.Blocks:
    """Load MODEL_DIR (and INDEX_DIR) and build the page; ``UsageError`` with one line for a bad folder."""
    from .embedder import load_for_command

    import_gradio()  # fail before loading anything when Gradio is missing
    index = None
    if index_dir is not None:
        from .index import PostIndex

        index = PostIndex.load(index_dir, model_dir=model_dir, device=device)
    embedder = load_for_command(str(model_dir), device)
    if index is not None and index.dim > embedder.embedding_dim:
        raise UsageError(f"index {index_dir} holds {index.dim}-dim vectors, model {model_dir} embeds {embedder.embedding_dim}")
    return build_app(embedder, index, title=f"booru-embed: {Path(str(model_dir)).name}")


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT, **kwargs: Any) -> Any:
    """Serve ``demo`` on ``host:port`` (never a share link); ``kwargs`` go to ``Blocks.launch``."""
    return demo.launch(server_name=host, server_port=port, share=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------
def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``booru-embed app``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="model folder or Hub repo id")
    parser.add_argument("--index", metavar="INDEX_DIR", help="index folder of `booru-embed index` (similar posts)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default: {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def run_app(args: argparse.Namespace) -> int:
    """Run ``booru-embed app``: serve the page until interrupted."""
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be from 1 to 65535, got {args.port}")
    demo = load_app(args.model_dir, args.index, args.device)
    launch(demo, args.host, args.port, prevent_thread_lock=True, quiet=True)  # quiet: no share-link hint
    print(f"serving on http://{args.host}:{args.port} (Ctrl+C stops)")
    demo.block_thread()
    return 0
