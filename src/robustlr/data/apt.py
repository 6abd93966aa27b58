"""Installing a dataset's Debian package with ``apt-get`` (used by :func:`robustlr.data.provision`).

``apt-get`` is used only on Debian (``/etc/debian_version`` exists), when it is on ``PATH`` and the process
runs as root; :func:`apt_unavailable` says why not otherwise.  Commands run through :data:`run_command`, a
module attribute (tests replace it), with their output captured: it is shown only, briefly, when the
install fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["CommandRunner", "PackageInstallError", "apt_install", "apt_unavailable", "run_command"]

DEBIAN_VERSION_FILE = Path("/etc/debian_version")
APT_TIMEOUT = 1800.0
"""Seconds one ``apt-get`` command may take before it is given up."""

CommandRunner = Callable[[Sequence[str]], tuple[int, str]]
"""Runs a command line; returns its exit status and its output (stdout and stderr together)."""


class PackageInstallError(OSError):
    """``apt-get install`` failed (its exit status and the last lines of its output are in the message)."""


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv`` non-interactively (no stdin, ``DEBIAN_FRONTEND=noninteractive``); return (status, output).

    Raises:
        OSError: if the program cannot be started.
        subprocess.TimeoutExpired: after :data:`APT_TIMEOUT` seconds.
    """
    done = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace", env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=APT_TIMEOUT, check=False,
    )
    return done.returncode, done.stdout or ""


def apt_unavailable() -> str | None:
    """Why ``apt-get`` cannot install packages here (not Debian, no ``apt-get``, not root), or ``None`` if it can."""
    if not DEBIAN_VERSION_FILE.is_file():
        return f"not a Debian system ({DEBIAN_VERSION_FILE} is missing)"
    if shutil.which("apt-get") is None:
        return "apt-get is not on PATH"
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid != 0:
        return f"not root (effective uid {uid}); as root run: apt-get install -y <package>"
    return None


def _brief(output: str, lines: int = 3) -> str:
    """The last ``lines`` non-empty lines of ``output``, joined with `` | ``."""
    kept = [line.strip() for line in output.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "no output"


def _run(runner: CommandRunner, argv: Sequence[str]) -> tuple[int, str]:
    """``runner(argv)``, with a program that cannot start or times out reported as a failed run."""
    try:
        return runner(argv)
    except (OSError, subprocess.SubprocessError) as error:
        return -1, str(error)


def apt_install(package: str, runner: CommandRunner | None = None) -> None:
    """``apt-get install -y package``; if that fails (stale or missing package lists), ``apt-get update`` and
    one retry.

    Args:
        package: the Debian package name.
        runner: runs each command; ``None`` uses :data:`run_command` (looked up at call time).

    Raises:
        PackageInstallError: if the install still fails, with its exit status and the end of its output.
    """
    run = runner if runner is not None else run_command
    install = ["apt-get", "install", "-y", package]
    status, output = _run(run, install)
    if status == 0:
        return
    update_status, update_output = _run(run, ["apt-get", "update"])
    if update_status == 0:
        status, output = _run(run, install)
        if status == 0:
            return
        raise PackageInstallError(f"{' '.join(install)} failed (exit {status}) after apt-get update: {_brief(output)}")
    raise PackageInstallError(
        f"{' '.join(install)} failed (exit {status}: {_brief(output, 1)}); apt-get update failed too "
        f"(exit {update_status}): {_brief(update_output)}"
    )
