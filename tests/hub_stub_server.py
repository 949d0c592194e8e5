"""A tiny stand-in for the Hugging Face Hub's download API, for offline tests.

Serves local folders as model repositories on 127.0.0.1:

* `HEAD|GET /{owner}/{name}/resolve/{revision}/{path}` with the headers `huggingface_hub` reads (`ETag`,
  `Content-Length`, `X-Repo-Commit`); missing files get a 404 with `X-Error-Code: EntryNotFound`, unknown repos
  `RepoNotFound`, as the real Hub answers.
* `GET /api/models/{owner}/{name}[/revision/{revision}]`: a minimal model-info JSON (sha and file list).
* `GET /api/models/{owner}/{name}/tree/{revision}[/{folder}]`: the entries of a folder (transformers lists
  `additional_chat_templates/` when loading a processor); a missing folder is `EntryNotFound`.

`huggingface_hub` reads `HF_ENDPOINT` at import time, so point a *subprocess* at `server.endpoint`. Uploads are not
emulated (tests intercept `HfApi` instead). Every request is recorded in `server.requests` as (method, path).
"""

import hashlib
import http.server
import json
import threading
import urllib.parse
from pathlib import Path

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def _send(self, status: int, body: bytes, headers: dict[str, str], with_body: bool) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _error(self, code: str, with_body: bool) -> None:
        body = json.dumps({"error": code}).encode()
        self._send(404, body, {"X-Error-Code": code, "Content-Type": "application/json"}, with_body)

    def _answer(self, with_body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        self.server.requests.append((self.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            return self._tree("/".join(parts[2:4]), "/".join(parts[6:]), with_body)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._model_info("/".join(parts[2:4]), with_body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), "/".join(parts[4:]), with_body)
        self._error("EntryNotFound", with_body)

    def _model_info(self, repo_id: str, with_body: bool) -> None:
        folder = self.server.repos.get(repo_id)
        if folder is None:
            return self._error("RepoNotFound", with_body)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        info = {"id": repo_id, "modelId": repo_id, "sha": FAKE_COMMIT, "siblings": [{"rfilename": f} for f in files]}
        self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, with_body)

    def _tree(self, repo_id: str, folder_in_repo: str, with_body: bool) -> None:
        folder = self.server.repos.get(repo_id)
        if folder is None:
            return self._error("RepoNotFound", with_body)
        target = folder / folder_in_repo
        if not target.is_dir():
            return self._error("EntryNotFound", with_body)
        entries = []
        for path in sorted(target.iterdir()):
            rel = path.relative_to(folder).as_posix()
            oid = hashlib.sha1(rel.encode()).hexdigest()
            if path.is_dir():
                entries.append({"type": "directory", "path": rel, "oid": oid})
            else:
                entries.append({"type": "file", "path": rel, "size": path.stat().st_size, "oid": oid})
        self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, with_body)

    def _file(self, repo_id: str, filename: str, with_body: bool) -> None:
        folder = self.server.repos.get(repo_id)
        if folder is None:
            return self._error("RepoNotFound", with_body)
        target = (folder / filename).resolve()
        if folder.resolve() not in target.parents or not target.is_file():
            return self._error("EntryNotFound", with_body)
        body = target.read_bytes()
        headers = {
            "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
            "X-Repo-Commit": FAKE_COMMIT,
            "Content-Type": "application/octet-stream",
        }
        self._send(200, body, headers, with_body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    repos: dict[str, Path]
    requests: list[tuple[str, str]]


class HubStub:
    """Serve `{repo_id: folder}` as Hub model repositories; use as a context manager.

    Example:
        >>> with HubStub({"me/tiny-coop": adapter_dir}) as hub:
        ...     subprocess.run([...], env={**os.environ, "HF_ENDPOINT": hub.endpoint})
    """

    def __init__(self, repos: dict[str, str | Path]) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.repos = {repo_id: Path(folder) for repo_id, folder in repos.items()}
        self._server.requests = []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._server.requests

    def __enter__(self) -> "HubStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
