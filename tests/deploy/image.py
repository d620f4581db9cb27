"""Builds the repo's Dockerfile for real without a registry, and runs the image's entrypoint.

No registry is reachable here, so the base is a Debian tree made by mmdebstrap (python3 from
Debian's packages) and imported into podman. Everything lives under .cache/image/ in the repo
(gitignored): the base tarball, podman's storage and its layer cache, so a rerun only rebuilds
what changed. `podman run` fails here even as root (crun cannot set RLIMIT_NOFILE), so the entrypoint is
started from the mounted image filesystem with unshare + chroot, as the image's user, with the
image's environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import ROOT

CACHE = ROOT / ".cache" / "image"
# The suite with Python 3.11 (the version the project targets), and what the Dockerfile needs of a base.
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "passwd")
TAG = "localhost/visit-gateway:test"
# The host's CA bundle: this network re-signs TLS, so pip in the build needs it to reach PyPI.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS_HINT = "`make system-deps` installs podman, mmdebstrap and what they need"


def podman(*args: str, timeout: float = 600) -> str:
    """podman on the test's own storage (not the machine's), failing with its output."""
    binary = shutil.which("podman")
    assert binary, f"podman is missing: {TOOLS_HINT}"
    storage = ["--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run")]
    result = subprocess.run([binary, *storage, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"podman {args[0]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def exists(name: str) -> bool:
    try:
        podman("image", "exists", name, timeout=60)
    except AssertionError:
        return False
    return True


def base_image() -> str:
    """The Debian base in podman's storage, bootstrapped once per suite and package set."""
    digest = hashlib.sha256(" ".join((SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:12]
    name = f"localhost/visit-gateway-base:{SUITE}-{digest}"
    if exists(name):
        return name
    tarball = CACHE / f"base-{SUITE}-{digest}.tar"
    if not tarball.exists():
        assert shutil.which("mmdebstrap"), f"mmdebstrap is missing: {TOOLS_HINT}"
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        result = subprocess.run(
            ["mmdebstrap", "--variant=apt", "--include=" + ",".join(BASE_PACKAGES), SUITE, str(partial)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-4000:]}"
        partial.rename(tarball)
    podman("import", str(tarball), name)
    return name


def build() -> str:
    """`podman build` of the repo's Dockerfile on the Debian base; returns the image's tag."""
    args = ["build", "--isolation=chroot", "--build-arg", f"BASE={base_image()}", "--tag", TAG]
    if HOST_CA.exists():
        args += ["--volume", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    podman(*args, str(ROOT), timeout=900)
    return TAG


@dataclass(frozen=True)
class ImageConfig:
    user: str
    entrypoint: list[str]
    env: dict[str, str]


def inspect(tag: str) -> ImageConfig:
    [info] = json.loads(podman("image", "inspect", tag))
    config: dict[str, Any] = info["Config"]
    env = dict(item.split("=", 1) for item in config.get("Env", []))
    return ImageConfig(config.get("User", ""), config.get("Entrypoint") or [], env)


def mount(tag: str) -> Path:
    return Path(podman("image", "mount", tag).strip())


def unmount(tag: str) -> None:
    podman("image", "unmount", tag)


def start_entrypoint(root: Path, config: ImageConfig, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The image's entrypoint as its user, in a private mount namespace (so /proc and /dev go away
    with it) chrooted into the image's filesystem; the network is the host's loopback."""
    uid, _, gid = config.user.partition(":")
    # sh -c SCRIPT sh ROOT ENTRYPOINT...: chroot starts in the new root's /, the image's WorkingDir.
    script = (
        'root="$1"; shift; mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" && '
        f'exec /usr/sbin/chroot --userspec={uid}:{gid or uid} "$root" "$@"'
    )
    command = ["unshare", "--mount", "--fork", "--kill-child=SIGKILL", "sh", "-c", script, "sh", str(root)]
    return subprocess.Popen(
        [*command, *config.entrypoint],
        env=config.env | env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def entrypoint_pid(proc: subprocess.Popen[bytes]) -> int:
    """The entrypoint's own process: unshare's child (sh execs chroot, chroot execs it)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the entrypoint itself, as the kubelet sends it."""
    os.kill(entrypoint_pid(proc), signal.SIGTERM)


def wait(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The entrypoint's exit status; killed (and TimeoutExpired) if it outlives `timeout`."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise
