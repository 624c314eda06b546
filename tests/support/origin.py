"""A static file origin on 127.0.0.1 serving a folder (Python's http.server, threaded)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0
    on_request: Callable[[str], None] | None = None

    def do_GET(self) -> None:
        if self.on_request is not None:
            self.on_request(self.path)
        if self.delay:
            time.sleep(self.delay)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(
    root: Path,
    host: str = "127.0.0.1",
    delay: float = 0.0,
    on_request: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Serve ``root`` read-only over HTTP/1.1 on a free port; yields the base URL (no trailing slash).

    ``delay`` seconds are spent before answering each GET (a slow origin);
    ``on_request`` is called with each GET's path first.
    """
    handler_class = type(
        "Handler",
        (_QuietHandler,),
        {"delay": delay, "on_request": staticmethod(on_request) if on_request else None},
    )
    handler = functools.partial(handler_class, directory=str(root))
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
