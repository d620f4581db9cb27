"""Starting and stopping the benchmark's processes, and reading their CPU time and memory
from /proc (Linux)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
START_LIMIT = 30.0


@dataclass
class Proc:
    kind: str
    popen: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu(self) -> float:
        """User + system CPU seconds used so far, by the process and the children it runs (the
        workers of `gateway serve --workers N`)."""
        return cpu_seconds(self.pid) + sum(cpu_seconds(child) for child in children(self.pid))

    def rss(self) -> int:
        """Resident set size in bytes."""
        return rss_bytes(self.pid)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            stream.close()


@contextmanager
def started(kind: str, spec: dict[str, Any]) -> Iterator[Proc]:
    """A `bench.servers` process, stopped when the block ends, however it ends."""
    popen = subprocess.Popen(
        [sys.executable, "-m", "bench.servers", kind, "--spec", json.dumps(spec)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_LIMIT
        assert popen.stdout is not None
        line = popen.stdout.readline().decode()
        if not line.startswith("READY ") or time.monotonic() > deadline:
            raise RuntimeError(f"{kind} did not start (exit code {popen.poll()}): {line!r}")
        yield Proc(kind, popen, int(line.split()[1]))
    finally:
        _stop(popen)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _until_answers(popen: subprocess.Popen[bytes], port: int, ask: bytes, expect: bytes, what: str) -> None:
    """Waits (bounded) until the server on `port` answers `ask` with a reply starting `expect`."""
    deadline = time.monotonic() + START_LIMIT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(ask)
                if sock.recv(64).startswith(expect):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or popen.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


@contextmanager
def started_redis(directory: str) -> Iterator[Proc]:
    """A redis-server of its own on 127.0.0.1 (no persistence), stopped when the block ends."""
    port = _free_port()
    popen = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        _until_answers(popen, port, b"PING\r\n", b"+PONG", "redis-server")
        yield Proc("redis", popen, port)
    finally:
        _stop(popen)


@contextmanager
def started_serve(workers: int, env: dict[str, str]) -> Iterator[Proc]:
    """`gateway serve --workers N` as users run it, configured by `env` (GATEWAY_* variables) on a
    free port of 127.0.0.1; stopped with SIGTERM when the block ends."""
    port = _free_port()
    full_env = {
        **os.environ,
        **env,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": "0",
    }
    popen = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", str(workers)],
        cwd=ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        ready = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
        _until_answers(popen, port, ready, b"HTTP/1.1 200", f"gateway serve --workers {workers}")
        # Every worker is listening once each answered; give the others the same start time.
        time.sleep(1.0)
        yield Proc("serve", popen, port)
    finally:
        _stop(popen)
