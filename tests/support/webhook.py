"""A tiny local HTTP webhook receiver: collects the bodies apprise POSTs (json:// URLs)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """`json://127.0.0.1:<port>/` for apprise; `messages` holds every POSTed JSON body."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server calls it by this name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    document = json.loads(body)
                except ValueError:
                    document = {"raw": body.decode(errors="replace")}
                with receiver._lock:
                    receiver.messages.append(document)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/"

    def titles(self) -> list[str]:
        with self._lock:
            return [str(m.get("title", "")) for m in self.messages]

    def wait_for(self, text: str, timeout: float) -> list[str]:
        """Wait until a message title contains `text`; all titles so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in t for t in self.titles()):
                return self.titles()
            time.sleep(0.1)
        raise AssertionError(f"no message with {text!r} within {timeout}s: {self.titles()}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
