"""A small faulty HTTP proxy on loopback (standard library only) for injecting S3 faults for real."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Plan:
    """What the proxy does to the next requests: a fault for the first `count`, then forwards."""

    mode: str = "pass"  # pass | status | slowdown | drop | hang
    count: int = 0
    status: int = 503
    latency: float = 0.0  # added to every forwarded request
    seen: int = 0
    faults: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> str | None:
        with self.lock:
            self.seen += 1
            if self.mode != "pass" and self.faults < self.count:
                self.faults += 1
                return self.mode
        return None


class FaultyProxy:
    """Forwards HTTP to `upstream` (moto_server), injecting the faults in `plan`."""

    def __init__(self, upstream: str, plan: Plan | None = None) -> None:
        self.plan = plan or Plan()
        target = urlparse(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy.plan.next_fault()
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "hang":
                    time.sleep(30)
                    self.close_connection = True
                    return
                if fault in ("status", "slowdown"):
                    payload = SLOW_DOWN if fault == "slowdown" else b"injected fault"
                    self.send_response(503 if fault == "slowdown" else proxy.plan.status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if proxy.plan.latency:
                    time.sleep(proxy.plan.latency)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{target.hostname}:{target.port}"
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
