"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, as much of it as huggingface_hub's `model_info`,
`hf_hub_download` and `snapshot_download` use (HF_ENDPOINT points them here), answering as huggingface.co does:

- GET /api/models/OWNER/NAME[/revision/REV]: the model info (sha, siblings); GET /api/models/OWNER/NAME/tree/REV: the
  file listing (snapshot_download);
- HEAD / GET /OWNER/NAME/resolve/REV/FILE: the file, with X-Repo-Commit and ETag;
- errors as the Hub gives them: an unknown or private repository asked anonymously is 401 RepoNotFound (404 with a
  token), a gated one serves its info but 401 GatedRepo for its files, a token the Hub does not know is 401 without an
  error code, an unknown revision 404 RevisionNotFound, a missing file 404 EntryNotFound (with the commit).

Every request is recorded, so that tests can say what was downloaded; `drop` makes the GETs of a file end mid-body
(a connection lost during a download), `portal` answers everything with an HTML page (a captive portal)."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

TOKEN = "hf_stand_in_token"  # the one token the stand-in accepts


class FakeHub:
    """repos: {"owner/name": {filename: bytes}}, each one commit (`sha[repo]`) that "main" and `tags` name."""

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: tuple[str, ...] = (), private: tuple[str, ...] = (),
                 tags: dict[str, str] | None = None):
        self.repos = repos
        self.gated, self.private = set(gated), set(private)
        self.tags = dict(tags or {})  # tag -> repo whose commit it names
        self.drop: set[str] = set()  # file names whose GET is cut off after a few bytes
        self.portal = False  # every request answered 200 with an HTML page (a captive portal, a proxy's login)
        self.requests: list[tuple[str, str]] = []
        self.sha = {r: hashlib.sha1(r.encode()).hexdigest() for r in repos}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: bytes, body: bool, headers: dict) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None, body: bool, **extra: str) -> None:
        headers = {"Content-Type": "application/json", **({"X-Error-Code": code} if code else {}), **extra}
        self._send(h, status, json.dumps({"error": code or "Unauthorized"}).encode(), body, headers)

    def _refused(self, h: BaseHTTPRequestHandler, repo: str, rev: str, body: bool) -> bool:
        """Answers with the Hub's error (and True) when `repo` at `rev` is not served to this request."""
        auth = h.headers.get("authorization")
        if auth and auth != f"Bearer {TOKEN}":
            self._error(h, 401, None, body, **{"X-Error-Message": "Invalid credentials in Authorization header"})
        elif repo not in self.repos or (repo in self.private and not auth):
            self._error(h, 404 if auth else 401, "RepoNotFound", body, **{"X-Error-Message": "Repository not found"})
        elif rev not in ("main", self.sha[repo]) and self.tags.get(rev) != repo:
            self._error(h, 404, "RevisionNotFound", body)
        else:
            return False
        return True

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(h.path.split("?", 1)[0])
        self.requests.append((h.command, path))
        if self.portal:
            return self._send(h, 200, b"<html><body>Sign in to the network</body></html>", body,
                              {"Content-Type": "text/html"})
        parts = path.strip("/").split("/")
        json_type = {"Content-Type": "application/json"}
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo, kind, rev = "/".join(parts[2:4]), (parts[4:5] or ["revision"])[0], "/".join(parts[5:]) or "main"
            if self._refused(h, repo, rev, body):
                return
            files = self.repos[repo]
            if kind == "tree":
                items = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                         for f, b in sorted(files.items())]
                return self._send(h, 200, json.dumps(items).encode(), body, json_type)
            info = {"id": repo, "modelId": repo, "sha": self.sha[repo], "private": repo in self.private,
                    "gated": "manual" if repo in self.gated else False,
                    "siblings": [{"rfilename": f, "size": len(b)} for f, b in sorted(files.items())]}
            return self._send(h, 200, json.dumps(info).encode(), body, json_type)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if self._refused(h, repo, rev, body):
                return
            if repo in self.gated and not h.headers.get("authorization"):
                return self._error(h, 401, "GatedRepo", body, **{"X-Error-Message": "Access to this model is restricted"})
            if name not in self.repos[repo]:
                return self._error(h, 404, "EntryNotFound", body, **{"X-Repo-Commit": self.sha[repo]})
            data = self.repos[repo][name]
            headers = {"X-Repo-Commit": self.sha[repo], "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                       "Content-Type": "application/octet-stream"}
            if body and name in self.drop:  # the connection lost mid-download
                h.send_response(200)
                for k, v in headers.items():
                    h.send_header(k, v)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data[:10])
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(socket.SHUT_RDWR)
                return
            return self._send(h, 200, data, body, headers)
        self._error(h, 404, "NotFound", body)


def repo_files(folder: Path, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """A repository's files from a local folder (all its top-level files, or `names`)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and (names is None or p.name in names)}
