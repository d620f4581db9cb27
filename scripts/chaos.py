"""`make chaos MINUTES=N`: three gateway replicas behind HAProxy, Redis with Sentinel, the sandbox
upstream, apps creating and polling through HAProxy, and a fixed, seeded schedule of faults; a
table of what happened and the targets, exit 1 on a miss (docs/reliability.md, "Chaos").

    .venv/bin/python scripts/chaos.py --minutes 5
    .venv/bin/python scripts/chaos.py --short --json chaos.json    # the test's shortened run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.chaos import FULL, SHORT, Plan, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--apps", type=int, default=30)
    parser.add_argument("--short", action="store_true", help="about two minutes, four faults (the test's run)")
    parser.add_argument("--json", type=Path, default=Path("chaos-report.json"))
    parser.add_argument("--keep", type=Path, help="keep the processes' logs in this directory")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be in (0, 60]")
    if args.short:
        plan = Plan(minutes=2.5, seed=args.seed, faults=list(SHORT), apps=args.apps, warm_up=20.0, tail=20.0)
    else:
        plan = Plan(minutes=args.minutes, seed=args.seed, faults=list(FULL), apps=args.apps)
    report = run(plan, args.json, args.keep)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
