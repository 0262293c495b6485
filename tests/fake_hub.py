"""A local, in-memory stand-in for the Hugging Face Hub HTTP API, for tests that must not use the network.

It speaks the endpoints that ``huggingface_hub`` 2.x calls for ``create_repo``, ``create_commit``
(preupload + NDJSON commit with regular, base64 file contents), ``repo_info``/``model_info``,
``list_repo_tree`` and downloads (``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` with ``ETag``,
``X-Repo-Commit`` and ``Content-Length``), which is all ``publish`` and ``from_pretrained`` need.
Writes need ``Authorization: Bearer <token>``; ``fail_commits`` makes commits answer 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_blob_sha(content: bytes) -> str:
    """The git object id of a blob, which the Hub uses as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeRepo:
    """One model repository: its files at the head of ``main`` and its commit history."""

    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def head(self) -> str:
        """The sha of the newest commit (a fixed sha for the empty initial state)."""
        return self.commits[-1] if self.commits else "0" * 40


class FakeHub:
    """A threaded HTTP server holding repositories in memory; use as a context manager."""

    def __init__(self, token: str = "hf_fake_token") -> None:
        self.token = token
        self.repos: dict[str, FakeRepo] = {}
        self.fail_commits = False
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_PREUPLOAD = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$")
_COMMIT = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (BaseHTTPRequestHandler's name)
            """Keep test output quiet."""

        # -- plumbing -------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return None
            return repo

        # -- verbs ----------------------------------------------------------------------------
        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._route()

        def do_GET(self) -> None:  # noqa: N802
            self._route()

        def do_POST(self) -> None:  # noqa: N802
            self._route()

        def _route(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            if self.command == "POST":
                body = self._body()
                if path == "/api/repos/create":
                    return self._create(json.loads(body))
                if path == "/api/validate-yaml":
                    return self._json(200, {})
                if match := _PREUPLOAD.match(path):
                    return self._preupload(match["repo"], json.loads(body))
                if match := _COMMIT.match(path):
                    return self._commit(match["repo"], body)
            elif match := _RESOLVE.match(path):
                return self._resolve(match["repo"], match["path"])
            elif match := _TREE.match(path):
                return self._tree(match["repo"], match["path"] or "")
            elif match := _API_REPO.match(path):
                return self._info(match["repo"])
            self._error(404, "NotFound", f"no fake endpoint for {self.command} {path}")

        # -- endpoints ------------------------------------------------------------------------
        def _create(self, payload: dict) -> None:
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in hub.repos:
                return self._error(409, "Conflict", "You already created this model repo")
            hub.repos[repo_id] = FakeRepo(private=payload.get("visibility") == "private")
            self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

        def _preupload(self, repo_id: str, payload: dict) -> None:
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if (repo := self._repo(repo_id)) is None:
                return None
            files = []
            for entry in payload["files"]:
                existing = repo.files.get(entry["path"])
                files.append({"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False,
                              "oid": git_blob_sha(existing) if existing is not None else None})
            self._json(200, {"files": files, "commitOid": repo.head})

        def _commit(self, repo_id: str, body: bytes) -> None:
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if (repo := self._repo(repo_id)) is None:
                return None
            if hub.fail_commits:
                return self._error(500, "InternalError", "the fake hub was told to fail commits")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            for item in lines:
                if item["key"] == "file":
                    repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    repo.files.pop(item["value"]["path"], None)
                elif item["key"] != "header":
                    return self._error(400, "BadRequest", f"the fake hub does not support {item['key']}")
            sha = hashlib.sha1(body + repo.head.encode()).hexdigest()
            repo.commits.append(sha)
            self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha})

        def _resolve(self, repo_id: str, file_path: str) -> None:
            if (repo := self._repo(repo_id)) is None:
                return None
            if file_path not in repo.files:
                return self._error(404, "EntryNotFound", f"{file_path} does not exist in {repo_id}")
            content = repo.files[file_path]
            self._send(200, content, {"ETag": f'"{git_blob_sha(content)}"', "X-Repo-Commit": repo.head,
                                      "Content-Type": "application/octet-stream"})

        def _tree(self, repo_id: str, folder: str) -> None:
            if (repo := self._repo(repo_id)) is None:
                return None
            prefix = f"{folder.rstrip('/')}/" if folder else ""
            entries = [{"type": "file", "path": name, "size": len(data), "oid": git_blob_sha(data)}
                       for name, data in sorted(repo.files.items()) if name.startswith(prefix)]
            if folder and not entries:
                return self._error(404, "EntryNotFound", f"{folder} does not exist in {repo_id}")
            self._json(200, entries)

        def _info(self, repo_id: str) -> None:
            if (repo := self._repo(repo_id)) is None:
                return None
            self._json(200, {"id": repo_id, "modelId": repo_id, "sha": repo.head, "private": repo.private,
                             "siblings": [{"rfilename": name} for name in sorted(repo.files)]})

    return Handler
