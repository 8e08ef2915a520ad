"""A scripted HTTP server on 127.0.0.1, for behaviours a real server won't show.

Use a real Prometheus where the claim is about Prometheus; use this only to
produce slow answers, 5xx storms, malformed or oversized bodies, auth
failures, and to look at the exact headers a client sent.

    with FakeHTTPServer() as fake:
        fake.respond(503, {"status": "error", "errorType": "unavailable", "error": "x"})
        fake.respond(200, {"status": "success", "data": {...}})
        ...  # point a client at fake.url
        assert len(fake.requests) == 2

Responses are served in order; the last one repeats. ``delay`` holds the
answer back (interruptible: ``stop()`` releases held handlers at once).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Union
from urllib.parse import parse_qs, urlsplit

from .net import LOOPBACK


@dataclass
class Response:
    status: int = 200
    body: Union[bytes, str, Any] = b""
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    #: hang up without answering (a reset / RemoteDisconnected for the client)
    drop: bool = False
    #: send the body without Content-Length, ending it by closing the connection
    no_length: bool = False
    #: seconds between body bytes (a server that trickles its answer)
    trickle: float = 0.0

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, List[str]]
    headers: Dict[str, str]
    body: bytes
    client_port: int

    @property
    def form(self) -> Dict[str, List[str]]:
        return parse_qs(self.body.decode("utf-8", "replace"))

    @property
    def params(self) -> Dict[str, List[str]]:
        """Query-string and form parameters together (GET or POST)."""
        merged = dict(self.query)
        for key, values in self.form.items():
            merged.setdefault(key, []).extend(values)
        return merged


class FakeHTTPServer:
    def __init__(self) -> None:
        self.requests: List[Request] = []
        self._responses: List[Response] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- script ------------------------------------------------------------

    def respond(
        self,
        status: int = 200,
        body: Union[bytes, str, Any] = b"",
        *,
        headers: Optional[Dict[str, str]] = None,
        delay: float = 0.0,
        drop: bool = False,
        no_length: bool = False,
        trickle: float = 0.0,
    ) -> "FakeHTTPServer":
        """Queue a response. Non-bytes/str bodies are sent as JSON."""
        hdrs = dict(headers or {})
        if not isinstance(body, (bytes, str)):
            hdrs.setdefault("Content-Type", "application/json")
        with self._lock:
            self._responses.append(Response(status, body, hdrs, delay, drop, no_length, trickle))
        return self

    def _next(self) -> Response:
        with self._lock:
            if not self._responses:
                return Response(404, b"no scripted response")
            if len(self._responses) > 1:
                return self._responses.pop(0)
            return self._responses[0]

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() first"
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() first"
        return int(self._httpd.server_address[1])

    def start(self) -> "FakeHTTPServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                with fake._lock:
                    fake.requests.append(
                        Request(
                            self.command, split.path, parse_qs(split.query), dict(self.headers.items()), body,
                            self.client_address[1],
                        )
                    )
                resp = fake._next()
                if resp.delay and fake._stopping.wait(resp.delay):
                    self.close_connection = True
                    return
                if resp.drop:
                    self.close_connection = True
                    return
                payload = resp.payload()
                self.send_response(resp.status)
                for key, value in resp.headers.items():
                    self.send_header(key, value)
                if resp.no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                elif "Content-Length" not in resp.headers:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    if resp.trickle:
                        self.wfile.flush()
                        for i in range(len(payload)):
                            if fake._stopping.wait(resp.trickle):
                                break
                            self.wfile.write(payload[i : i + 1])
                            self.wfile.flush()
                    else:
                        self.wfile.write(payload)
                except OSError:
                    # The client gave up (timeout, size limit): expected here.
                    self.close_connection = True

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up mid-answer are part of the script

        self._httpd = Server((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fakehttp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHTTPServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
