"""The trainer's real command line, run from tests as a user runs it (a fresh interpreter per command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from loadtest.procs import REPO_ROOT


def train(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``r2rank-train ARGS``, which must succeed; the failure names the stage and ends with its stderr."""
    result = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, f"{args[0]}: {result.stderr[-3000:]}"
    return result


def train_fails(*args: str, timeout: float = 300) -> str:
    """Run a trainer command that must refuse with a clear message, not a traceback; that message, unwrapped."""
    result = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, "COLUMNS": "2000"})  # fmt: skip
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())  # typer boxes and wraps long messages
