"""Raw HTTP over a real socket, for requests no HTTP client would send (odd methods, malformed or
huge headers). Loopback only; every read is bounded by a timeout."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(host: str, port: int, request: bytes, timeout: float = 5.0, method: str = "GET") -> Reply | None:
    """Sends `request` as is and reads one response (`method`: the request's, so that the answer
    to a HEAD is read without a body); None if the server closed the connection without answering."""
    assert host.startswith("127.") or host == "::1", "loopback only"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer and close before reading all of a huge request.
            pass
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def get(path: str, headers: dict[str, str] | list[tuple[str, str]] | None = None, method: str = "GET") -> bytes:
    """A request's bytes: `Connection: close` so the answer ends with the connection."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in items]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
