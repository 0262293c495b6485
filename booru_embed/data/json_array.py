"""Whole-JSON-array metadata files (``[{...}, {...}]``, as Danbooru's ``posts.json`` API pages and
some danbooru2023/2024 metadata dumps are) -> the row blocks ``build-dataset`` checks and writes.

The array is decoded one element at a time from a sliding buffer (``json.JSONDecoder.raw_decode``),
so memory stays bounded by the block size whatever the file size. Every element is reported by the
line its first character is on. Fields are read as in JSON Lines (``blocks.source_keys``: ``id``,
``rating``, ``score`` and the tags by category, lists joined), any other key ignored. Text that is
not JSON ends the array there: the rest of the file is one reject, the posts before it are kept.
"""

from __future__ import annotations

import codecs
import functools
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError
from .blocks import RAW_CHARS, Block, Job, open_input
from .readers import json_block

_DECODER = json.JSONDecoder()
_POSTS_PER_JOB = 20_000
_BROKEN = object()  # stands for an element that did not decode


def is_json_array(path: Path, compression: str | None) -> bool:
    """True when the file's first non-blank character is ``[`` (a whole JSON array, not JSON Lines)."""
    with open_input(path, compression) as stream:
        head = stream.read(1 << 16).lstrip(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def check_json_array(path: Path, compression: str | None) -> None:
    """Stop early (UsageError) when the array's first element is not a post object."""
    first = next(_elements(path, compression, 1 << 20), None)
    if first is None:
        raise UsageError(f"{path}: empty JSON array")
    if not isinstance(first[2], dict):
        raise UsageError(f"{path}: the JSON array's first element is not a post object")
    missing = [c for c in ("id", "rating", "score") if c not in first[2]]
    if missing:
        raise UsageError(f"{path}: the first post lacks key(s) {', '.join(missing)}")


def _elements(path: Path, compression: str | None, block_bytes: int) -> Iterator[tuple[int, str, object, int]]:
    """(line, raw text cut short, value, input bytes read so far) of every element of the array;
    ``_BROKEN`` as the value of the text where decoding failed, which ends the iteration."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    with open_input(path, compression) as stream:
        text, pos, line, line_pos = "", 0, 1, 0  # ``line`` is the line number at text[line_pos]
        exhausted, started = False, False
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,\ufeff":
                pos += 1
            if pos == len(text) or (text[pos] == "{" and len(text) - pos < block_bytes and not exhausted):
                if exhausted:
                    return  # no closing bracket: the elements read are all there is
                line += text.count("\n", line_pos, pos)
                chunk = stream.read(block_bytes)
                exhausted = not chunk
                text, pos, line_pos = text[pos:] + decoder.decode(chunk, final=exhausted), 0, 0
                continue
            line += text.count("\n", line_pos, pos)
            line_pos = pos
            if not started:
                if text[pos] != "[":
                    yield line, text[pos: pos + RAW_CHARS], _BROKEN, stream.tell()
                    return
                started, pos = True, pos + 1
                continue
            if text[pos] == "]":
                return
            try:
                value, end = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError:
                if not exhausted and len(text) - pos < 64 * block_bytes:
                    chunk = stream.read(block_bytes)  # an element longer than the buffer: read on
                    exhausted = not chunk
                    text += decoder.decode(chunk, final=exhausted)
                    continue
                yield line, text[pos: pos + RAW_CHARS], _BROKEN, stream.tell()
                return
            yield line, text[pos: min(end, pos + RAW_CHARS)], value, stream.tell()
            pos = end


def _block(elements: list[tuple[int, str, object, int]]) -> Block:
    """Decoded array elements -> a block; elements that are no post object are its rejects."""
    broken = [(line, "invalid_json", "not JSON; the rest of the file is not read", raw)
              for line, raw, value, _ in elements if value is _BROKEN]
    return json_block([(line, raw, value) for line, raw, value, _ in elements if value is not _BROKEN], broken)


def json_array_jobs(path: Path, compression: str | None, block_bytes: int) -> Iterator[tuple[Job, int]]:
    """Parse jobs for one JSON array file, each with the number of input bytes it stands for."""
    elements: list[tuple[int, str, object, int]] = []
    done = 0
    for element in _elements(path, compression, block_bytes):
        elements.append(element)
        if len(elements) >= _POSTS_PER_JOB:
            yield functools.partial(_block, elements), element[3] - done
            elements, done = [], element[3]
    if elements:
        yield functools.partial(_block, elements), path.stat().st_size - done
