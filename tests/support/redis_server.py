"""A real redis-server (Debian's) for the tests: 127.0.0.1, a free port, a temp dir, no persistence.

`redis_server` starts one per test and kills it in teardown, whatever the test did. It can be
stopped and started again on the same port to play a Redis outage. `redis_sentinel` starts a
primary, a replica of it and a sentinel watching them (the same binary, `--sentinel`), for
failover; `RedisSentinel(directory, sentinels=3)` is the production shape `make chaos` runs.
"""

from __future__ import annotations

import shutil
import signal
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

    def pause(self) -> None:
        """SIGSTOP: the process is frozen, its connections open and silent (a stalled host)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kills the server (SIGKILL: an outage, not a shutdown) and waits for it to be gone."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None


class RedisSentinel:
    """A primary, one replica and `sentinels` sentinels (quorum: a majority) that fail over
    within seconds. One sentinel with quorum 1 by default; `make chaos` runs three, as
    production does (docs/replicas.md)."""

    PRIMARY = "gw-primary"

    def __init__(
        self, directory: Path, sentinels: int = 1, down_after_ms: int = 300, failover_timeout_ms: int = 3000
    ) -> None:
        self.primary = RedisServer(directory / "primary", "--repl-diskless-sync-delay", "0")
        self.replica = RedisServer(
            directory / "replica", "--replicaof", "127.0.0.1", str(self.primary.port), "--repl-diskless-sync-delay", "0"
        )
        self.quorum = sentinels // 2 + 1
        self.sentinels = []
        for n in range(sentinels):
            name = "sentinel" if sentinels == 1 else f"sentinel-{n + 1}"
            conf = directory / f"{name}.conf"  # each sentinel rewrites its own config file
            self.sentinels.append(RedisServer(directory / name, "--sentinel", conf=conf))
            conf.write_text(
                f"sentinel monitor {self.PRIMARY} 127.0.0.1 {self.primary.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.PRIMARY} {down_after_ms}\n"
                f"sentinel failover-timeout {self.PRIMARY} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.PRIMARY} 1\n"
            )
        self.sentinel = self.sentinels[0]
        for server in (self.primary, self.replica, *self.sentinels):
            server.directory.mkdir()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.PRIMARY}"

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        with self.replica.client() as client:
            # The sentinel learns of the replica from the primary: link them before it starts.
            self._until(lambda: client.info("replication")["master_link_status"] == "up", "replica never synced")
        for sentinel in self.sentinels:
            sentinel.start()
        if len(self.sentinels) > 1:
            # Each sentinel finds the others through the primary's hello channel (every 2 s).
            with self.sentinel.client() as client:
                self._until(
                    lambda: int(client.sentinel_master(self.PRIMARY)["num-other-sentinels"]) == len(self.sentinels) - 1,
                    "the sentinels never found each other",
                    limit=START_LIMIT * 2,
                )

    def primary_port(self) -> int:
        with self.sentinel.client() as client:
            _, port = client.sentinel_get_master_addr_by_name(self.PRIMARY)
            return int(port)

    def server_on(self, port: int) -> RedisServer:
        """The data node (primary or replica object) listening on `port`."""
        return next(s for s in (self.primary, self.replica) if s.port == port)

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()

    @staticmethod
    def _until(check: Callable[[], bool], problem: str, limit: float = START_LIMIT) -> None:
        end = time.monotonic() + limit
        while not check():
            if time.monotonic() > end:
                raise RuntimeError(problem)
            time.sleep(0.05)


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
