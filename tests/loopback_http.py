"""A real HTTP receiver on 127.0.0.1 for shipper tests: records every request, answers from a
script of statuses (then 200). Runs in a thread; ``stop()`` closes the socket so the port
refuses connections (a receiver that is down), ``start()`` listens on the same port again."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackReceiver:
    def __init__(self, script=(), port: int = 0) -> None:
        self.script = list(script)
        self.requests: list[tuple[dict[str, str], bytes, int]] = []  # headers, inflated body, status
        self.lock = threading.Lock()
        self.port = port
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> LoopbackReceiver:
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with rx.lock:
                    status = rx.script.pop(0) if rx.script else 200
                    rx.requests.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    def docs(self) -> list[dict]:
        """The documents of the requests answered 2xx, in arrival order."""
        with self.lock:
            return [json.loads(ln) for _, body, status in self.requests if 200 <= status < 300
                    for ln in body.splitlines() if ln]

    def __enter__(self) -> LoopbackReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
