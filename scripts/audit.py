"""Dependency advisories: runs pip-audit on the project's environment and says plainly what it
could and could not check (docs/security.md, "Dependency advisories").

Exit status:
- 1 if any installed package has a known vulnerability;
- 1 if some packages could not be checked (the advisory database was unreachable or did not know
  them) and AUDIT_STRICT=1;
- 0 otherwise. Without AUDIT_STRICT, packages that could not be checked are listed under a
  warning line that says the audit is incomplete: it is never reported as clean.

Usage: python scripts/audit.py  (with the project's venv python)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    pip_audit = Path(sys.executable).with_name("pip-audit")
    command = [str(pip_audit), "--skip-editable", "--progress-spinner", "off", "--format", "json"]
    report: dict = {"dependencies": []}
    error = ""
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        try:
            report = json.loads(run.stdout)
        except ValueError:
            # No report at all: pip-audit itself failed, typically on reaching the database.
            lines = run.stderr.strip().splitlines()
            error = lines[-1] if lines else f"pip-audit exited {run.returncode}"
    deps = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    unchecked = [d for d in deps if "skip_reason" in d]
    checked = len(deps) - len(unchecked)
    for dep in vulnerable:
        ids = ", ".join(f"{v['id']} (fixed in {', '.join(v.get('fix_versions') or ['?'])})" for v in dep["vulns"])
        print(f"audit: VULNERABLE {dep['name']} {dep['version']}: {ids}")
    strict = os.environ.get("AUDIT_STRICT") == "1"
    if error or unchecked:
        print(
            "audit: INCOMPLETE: the advisory database could not be queried for "
            + (f"any package ({error})" if error else f"{len(unchecked)} of {len(deps)} packages")
            + ("; failing (AUDIT_STRICT=1)" if strict else "; set AUDIT_STRICT=1 to fail on this")
        )
        for dep in unchecked[:5]:
            print(f"audit:   {dep['name']}: {dep['skip_reason']}")
        if len(unchecked) > 5:
            print(f"audit:   ... and {len(unchecked) - 5} more")
    print(f"audit: {checked} checked, {len(vulnerable)} with known vulnerabilities, {len(unchecked)} unchecked")
    if vulnerable or (strict and (error or unchecked)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
