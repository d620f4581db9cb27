"""`gateway serve`, with SIGUSR1 writing every asyncio task's stack to stderr (the replica's log):
how `make chaos` sees what a replica that does not exit after SIGTERM is waiting for, before it
kills it. Nothing else differs from `python -m gateway serve`."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
import traceback
from types import FrameType


def dump_tasks(signum: int, frame: FrameType | None) -> None:
    out = io.StringIO()
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:
        tasks = set()
    out.write(f"=== {len(tasks)} asyncio tasks\n")
    for task in tasks:
        out.write(f"--- {task!r}\n")
        task.print_stack(limit=20, file=out)
    out.write("=== main thread\n")
    traceback.print_stack(frame, file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, dump_tasks)
    from gateway.cli import main

    sys.exit(main(["serve"]))
