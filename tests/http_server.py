"""A local HTTP file server for download tests: 127.0.0.1, an ephemeral port, a request log, truncated answers."""

from __future__ import annotations

import http.server
import threading
import time
from types import TracebackType


class FileServer:
    """Serves ``files`` (URL path -> bytes) from a background thread while used as a context manager.

    ``requests`` lists the paths asked for, in order. A path in ``truncated`` is answered with a ``Content-Length``
    larger than the half of the body that is sent before the connection closes (an interrupted download); one in
    ``stalled`` sends that half and then nothing for ``stall_seconds`` (a client timeout in the middle of the body).
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.truncated: set[str] = set()
        self.stalled: set[str] = set()
        self.stall_seconds = 2.0
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
                owner.requests.append(self.path)
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                cut = self.path in owner.truncated or self.path in owner.stalled
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                if self.path in owner.stalled:
                    self.wfile.flush()
                    time.sleep(owner.stall_seconds)
                self.close_connection = True

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
