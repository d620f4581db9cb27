"""A real HAProxy (Debian's `haproxy`) on 127.0.0.1 in front of gateway replicas, as a platform
runs the gateway: round robin, each server health-checked on `GET /readyz`, a request whose
server connection failed or closed without an answer retried once on another server, and the
name of the server that answered in `X-Served-By`. The admin socket says which servers are UP.

Used by `make chaos` (tests/support/chaos.py) and its shortened run in the tests.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import terminate
from tests.support.netutil import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
START_LIMIT = 10.0


@dataclass(frozen=True)
class Backend:
    name: str
    port: int


def config_text(port: int, backends: list[Backend], admin_socket: Path, check_interval_ms: int = 500) -> str:
    """The configuration: `fall 2` at `check_interval_ms` takes a draining replica (503 on
    /readyz) out within about a second, well inside the gateway's 5 s drain; `rise 2` brings a
    started one back. `retry-on conn-failure empty-response` with `redispatch` sends a request
    whose replica died under it (SIGKILL: reset, or closed with no answer) to another replica:
    the apps' requests are GETs, which HAProxy retries."""
    servers = "\n".join(f"    server {b.name} 127.0.0.1:{b.port} check" for b in backends)
    every = f"inter {check_interval_ms}ms fastinter {check_interval_ms}ms downinter {check_interval_ms}ms"
    return f"""global
    maxconn 8000
    stats socket {admin_socket} mode 600 level admin
    # No syslog: this HAProxy runs for one bounded test.

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout queue 5s
    option http-keep-alive
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend apps
    bind 127.0.0.1:{port}
    default_backend gateway

backend gateway
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server {every} fall 2 rise 2
    http-response set-header X-Served-By %[srv_name]
{servers}
"""


class HAProxy:
    def __init__(self, directory: Path, backends: list[Backend], check_interval_ms: int = 500) -> None:
        self.directory = directory
        self.port = free_port()
        self.backends = backends
        self.admin_socket = directory / "admin.sock"
        self.config = directory / "haproxy.cfg"
        self.config.write_text(config_text(self.port, backends, self.admin_socket, check_interval_ms))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
        with open(self.directory / "haproxy.log", "ab") as log:
            # -db: in the foreground, not daemonized; it ends with this process group's test.
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + START_LIMIT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"haproxy did not start: {(self.directory / 'haproxy.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def admin(self, command: str) -> str:
        """One command on the admin socket (`show stat`, `show servers state`, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self) -> dict[str, str]:
        """Server name → status as HAProxy sees it now (UP, DOWN, `UP 1/2`, MAINT, ...)."""
        rows = self.stats().items()
        return {name: row.get("status", "") for name, row in rows if name not in ("FRONTEND", "BACKEND")}

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` rows of the gateway backend, by server name (BACKEND for the totals)."""
        lines = self.admin("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "gateway":
                rows[row["svname"]] = row
        return rows

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None
