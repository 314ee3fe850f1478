"""A delaying, counting HTTP proxy on loopback (standard library): real S3 latency for moto_server.

It runs as its own process, as the network would: relaying inside the measured process would
take that process's GIL and slow the very code under test. `GET /__proxy__/requests` returns the
request counts by method and `POST /__proxy__/reset` zeroes them (neither is forwarded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from urllib.parse import urlparse

METHODS = ("GET", "PUT", "HEAD", "POST", "DELETE")
_CONTROL = b"/__proxy__/"
_BUF = 1 << 16


class DelayProxy:
    """Forwards TCP connections to `upstream`, holding each HTTP request `delay` seconds first.

    A request is a client chunk that starts with an HTTP method and follows a response (or opens
    the connection); `requests` counts them by method, so a test can assert what a run asked for.
    """

    def __init__(self, upstream: str, delay: float = 0.05) -> None:
        self.upstream, self.delay = upstream, delay
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> DelayProxy:
        cmd = [sys.executable, __file__, self.upstream, "--delay", str(self.delay)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self._proc.kill()
            raise RuntimeError(f"delay proxy failed to start: {line}")
        self.url = f"http://127.0.0.1:{line[1]}"
        return self

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    @property
    def requests(self) -> Counter[str]:
        with urllib.request.urlopen(f"{self.url}/__proxy__/requests", timeout=10) as resp:
            return Counter(json.loads(resp.read()))

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/__proxy__/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).close()


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_method: Counter[str] = Counter()

    def count(self, chunk: bytes) -> bool:
        method = chunk.split(b" ", 1)[0].decode("latin-1")
        if method not in METHODS:
            return False
        with self.lock:
            self.by_method[method] += 1
        return True

    def control(self, chunk: bytes, client: socket.socket) -> bool:
        """Answer the proxy's own endpoints; True when `chunk` was one of them."""
        first = chunk.split(b"\r\n", 1)[0].split(b" ")
        if len(first) < 2 or not first[1].startswith(_CONTROL):
            return False
        with self.lock:
            if first[1].endswith(b"reset"):
                self.by_method.clear()
            body = json.dumps(self.by_method).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        client.sendall(head.encode() + body)
        return True


def _relay(client: socket.socket, upstream: tuple[str, int], delay: float, counts: _Counts) -> None:
    first = client.recv(_BUF)
    if not first or counts.control(first, client):
        _close(client)
        return
    server = socket.create_connection(upstream)
    answered = threading.Event()
    answered.set()  # the first request on a connection is new
    back = threading.Thread(target=_pump_back, args=(server, client, answered), daemon=True)
    back.start()
    chunk = first
    try:
        while chunk:
            if answered.is_set() and counts.count(chunk):
                answered.clear()
                time.sleep(delay)
            server.sendall(chunk)
            chunk = client.recv(_BUF)
    except OSError:
        pass
    finally:
        _close(server)
        back.join(timeout=5)
        _close(client)


def _pump_back(server: socket.socket, client: socket.socket, answered: threading.Event) -> None:
    try:
        while chunk := server.recv(_BUF):
            answered.set()
            client.sendall(chunk)
    except OSError:
        pass
    finally:
        _close(client)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("upstream", help="http://host:port to forward to")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added per request")
    args = parser.parse_args()
    parsed = urlparse(args.upstream)
    upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
    counts = _Counts()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            _relay(self.request, upstream, args.delay, counts)

    socketserver.ThreadingTCPServer.daemon_threads = True
    socketserver.ThreadingTCPServer.request_queue_size = 128
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        print("PORT", server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
