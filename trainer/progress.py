"""Progress of a long stage: ``N/M`` with its rate and ETA in the log, and every step's figures in a JSONL file.

The JSONL (``<run>/<stage>_steps.jsonl``, one object per step with ``step`` and the stage's figures) is what a
plot is drawn from. A resumed stage first drops the lines past the step it resumes from, so the file always
describes the weights on disk.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    def __init__(
        self,
        stage: str,
        total: int,
        log_path: Path | None = None,
        done: int = 0,
        every: int = 10,
        unit: str = "steps",
        shown: Sequence[str] | None = None,
    ) -> None:
        """``shown``: the figures the log line prints (default: all); the JSONL always gets all of them."""
        self.stage = stage
        self.shown = shown
        self.total = total
        self.done = done
        self.every = max(1, every)
        self.unit = unit
        self.log_path = log_path
        self._started = time.monotonic()
        self._done_at_start = done
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            _truncate_after(log_path, done)

    def eta_s(self) -> float:
        rate = (self.done - self._done_at_start) / max(1e-9, time.monotonic() - self._started)
        return (self.total - self.done) / rate if rate > 0 else math.inf

    def line(self, figures: dict[str, Any]) -> str:
        elapsed = time.monotonic() - self._started
        per = elapsed / max(1, self.done - self._done_at_start)
        keys = self.shown if self.shown is not None else list(figures)
        shown = " ".join(_figure(k, figures[k]) for k in keys if figures.get(k) is not None)
        return (
            f"{self.stage} {self.done}/{self.total} {self.unit} · {shown} · {per:.2f} s/{self.unit[:-1]} · "
            f"ETA {format_duration(self.eta_s())}"
        ).replace(" ·  · ", " · ")

    def update(self, done: int, **figures: Any) -> None:
        """``done`` units are finished; ``figures`` go to the JSONL (one line per call) and, every ``every``
        units and at the end, to the log."""
        self.done = done
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": done, **figures}) + "\n")
        if done % self.every == 0 or done == self.total or done == self._done_at_start + 1:
            logger.info(self.line(figures))


def _figure(name: str, value: Any) -> str:
    return f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"


def _truncate_after(path: Path, done: int) -> None:
    """Keep the records of steps 1..done (a resume continues after ``done``; later lines belong to lost work)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= done:
                kept.append(line)
        except json.JSONDecodeError:  # a torn last line after a crash
            continue
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The per-step records of a stage's JSONL."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
