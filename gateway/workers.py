"""`gateway serve --workers N`: N gateway processes sharing the listening ports.

One process of Python uses one core. With N > 1 this process only supervises: it starts N
workers, each a whole gateway (`gateway serve`) that binds the same ports with SO_REUSEPORT, so
the kernel spreads connections over them. Sessions must be shared, so Redis is required. Metrics
are collected in Prometheus's multiprocess mode: every worker writes its samples to files in one
directory (PROMETHEUS_MULTIPROC_DIR), and a scrape of any worker returns the sum of all of them.

The supervisor passes SIGTERM, SIGINT and SIGHUP on to every worker, so a drain or a flags
reload reaches all. A worker that dies on its own ends the others too, and the supervisor exits
with a failure: the orchestrator restarts the pod, which is what it is for.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from prometheus_client import multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How long workers get to finish after the supervisor forwarded a stop signal, beyond their own
# drain and shutdown time; then they are killed.
STOP_MARGIN = 5.0


def supervise(workers: int, child_args: Sequence[str], stop_within: float) -> int:
    """Runs `workers` copies of `python -m gateway <child_args>` until a stop signal or until one
    ends; returns the exit status (0 only when every worker stopped cleanly after a signal)."""
    own_dir = MULTIPROC_ENV not in os.environ
    directory = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="gateway-metrics-")
    env = {**os.environ, MULTIPROC_ENV: directory}
    procs = [subprocess.Popen([sys.executable, "-m", "gateway", *child_args], env=env) for _ in range(workers)]
    stopping: list[int] = []

    def forward(signum: int, _: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            stopping.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        while not stopping and all(proc.poll() is None for proc in procs):
            time.sleep(0.2)  # a signal's handler runs at once; the loop notices within 0.2 s
        if not stopping:  # a worker ended on its own: take the others down with it
            forward(signal.SIGTERM, None)
        deadline = time.monotonic() + stop_within + STOP_MARGIN
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            # Its live gauges (sessions in flight, store up) no longer count.
            multiprocess.mark_process_dead(proc.pid, directory)
        clean = bool(stopping) and all(proc.returncode == 0 for proc in procs)
        return 0 if clean else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
