"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, as much of it as huggingface_hub's `model_info` and
`hf_hub_download` use (HF_ENDPOINT points them here): the model info of a revision, and HEAD / GET of a file at a
revision, with the Hub's error codes for a missing repository, revision or file. It records every request, so that
tests can say what was downloaded."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class FakeHub:
    """repos: {"owner/name": {filename: bytes}}; every repository has one commit, `sha` (its revision "main")."""

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: tuple[str, ...] = ()):
        self.repos = repos
        self.gated = set(gated)
        self.requests: list[tuple[str, str]] = []
        self.sha = {r: hashlib.sha1(r.encode()).hexdigest() for r in repos}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                hub._serve(self, body=True)

            def do_HEAD(self):
                hub._serve(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloaded(self) -> list[str]:
        """The file names fetched with GET (not the HEAD requests), in order."""
        return [p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, body: bool) -> None:
        msg = json.dumps({"error": code}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(msg)))
        h.end_headers()
        if body:
            h.wfile.write(msg)

    def _revision(self, repo: str, rev: str) -> bool:
        return rev in ("main", self.sha[repo])

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(h.path.split("?", 1)[0])
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and (len(parts) == 4 or (len(parts) >= 6 and parts[4] == "revision")):
            repo, rev = "/".join(parts[2:4]), "/".join(parts[5:]) or "main"
            if repo not in self.repos:
                return self._error(h, 404, "RepoNotFound", body)
            if repo in self.gated:
                return self._error(h, 403, "GatedRepo", body)
            if not self._revision(repo, rev):
                return self._error(h, 404, "RevisionNotFound", body)
            info = {"id": repo, "modelId": repo, "sha": self.sha[repo], "private": False,
                    "siblings": [{"rfilename": f} for f in sorted(self.repos[repo])]}
            data = json.dumps(info).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if body:
                h.wfile.write(data)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo not in self.repos:
                return self._error(h, 404, "RepoNotFound", body)
            if repo in self.gated:
                return self._error(h, 403, "GatedRepo", body)
            if not self._revision(repo, rev):
                return self._error(h, 404, "RevisionNotFound", body)
            if name not in self.repos[repo]:
                return self._error(h, 404, "EntryNotFound", body)
            data = self.repos[repo][name]
            h.send_response(200)
            h.send_header("X-Repo-Commit", self.sha[repo])
            h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            if body:
                h.wfile.write(data)
            return
        self._error(h, 404, "NotFound", body)


def repo_files(folder: Path, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """A repository's files from a local folder (all its top-level files, or `names`)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and (names is None or p.name in names)}
