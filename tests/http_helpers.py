"""A local HTTP server over a folder for the remote-shard tests (helpers only; no tests here).

Bound to 127.0.0.1 on a free port, served from a daemon thread, and shut down when the `with`
block ends or, at the latest, after `limit_s` seconds, so a test can never leave it running.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FolderHandler(SimpleHTTPRequestHandler):
    """Serves the folder; the first `flaky[name]` requests for `name` get 503, and `name` in
    `cut` sends its full Content-Length but only its first `cut[name]` bytes. GETs are counted
    by name, HEADs as `HEAD name`, Authorization headers as `Authorization VALUE`."""

    flaky: dict[str, int] = {}
    cut: dict[str, int] = {}
    hits: Counter = Counter()

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        self.hits[name] += 1
        if "Authorization" in self.headers:
            self.hits[f"Authorization {self.headers['Authorization']}"] += 1
        if self.hits[name] <= self.flaky.get(name, 0):
            self.send_error(503, "try again")
            return
        if name in self.cut:
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: self.cut[name]])
            self.close_connection = True
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        self.hits[f"HEAD {self.path.lstrip('/')}"] += 1
        super().do_HEAD()

    def log_message(self, *args) -> None:  # quiet test output
        pass


@contextmanager
def serve_folder(
    root: Path,
    flaky: dict[str, int] | None = None,
    limit_s: float = 300,
    cut: dict[str, int] | None = None,
) -> Iterator[tuple[str, Counter]]:
    """(base URL `http://127.0.0.1:PORT`, request counts by path) while the block runs."""
    fields = {"flaky": dict(flaky or {}), "cut": dict(cut or {}), "hits": Counter()}
    handler = type("Handler", (FolderHandler,), fields)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    watchdog = threading.Timer(limit_s, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.hits
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
