"""A real redis-server (Debian's) for the tests: 127.0.0.1, a free port, a temp dir, no persistence.

`redis_server` starts one per test and kills it in teardown, whatever the test did. It can be
stopped and started again on the same port to play a Redis outage. `redis_sentinel` starts a
primary, a replica of it and a sentinel watching them (the same binary, `--sentinel`), for
failover.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.netutil import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_LIMIT = 10.0


class RedisServer:
    def __init__(self, directory: Path, *extra: str, conf: Path | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = extra
        self.conf = [str(conf)] if conf else []  # redis-server reads a config file only as argv[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client for the test's own checks (keys, TTLs, MEMORY USAGE)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> None:
        assert self.proc is None, "already running"
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    *self.conf,
                    "--bind", "127.0.0.1",
                    "--port", str(self.port),
                    "--dir", str(self.directory),
                    "--save", "",
                    "--appendonly", "no",
                    "--protected-mode", "yes",
                    "--daemonize", "no",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        end = time.monotonic() + START_LIMIT
        with self.client() as client:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > end:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)

    def stop(self) -> None:
        """Kills the server (SIGKILL: an outage, not a shutdown) and waits for it to be gone."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None


class RedisSentinel:
    """A primary, one replica and one sentinel (quorum 1) that fails over within seconds."""

    PRIMARY = "gw-primary"

    def __init__(self, directory: Path) -> None:
        self.primary = RedisServer(directory / "primary", "--repl-diskless-sync-delay", "0")
        self.replica = RedisServer(directory / "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
        conf = directory / "sentinel.conf"  # the sentinel rewrites its own config file
        self.sentinel = RedisServer(directory / "sentinel", "--sentinel", conf=conf)
        conf.write_text(
            f"sentinel monitor {self.PRIMARY} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.PRIMARY} 300\n"
            f"sentinel failover-timeout {self.PRIMARY} 3000\n"
        )
        for server in (self.primary, self.replica, self.sentinel):
            server.directory.mkdir()

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.PRIMARY}"

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        with self.replica.client() as client:
            # The sentinel learns of the replica from the primary: link them before it starts.
            self._until(lambda: client.info("replication")["master_link_status"] == "up", "replica never synced")
        self.sentinel.start()

    def primary_port(self) -> int:
        with self.sentinel.client() as client:
            _, port = client.sentinel_get_master_addr_by_name(self.PRIMARY)
            return int(port)

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()

    @staticmethod
    def _until(check: Callable[[], bool], problem: str) -> None:
        end = time.monotonic() + START_LIMIT
        while not check():
            if time.monotonic() > end:
                raise RuntimeError(problem)
            time.sleep(0.02)


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    servers = RedisSentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
