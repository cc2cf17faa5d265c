"""Side-by-side timing for the benchmarks: arms alternate on the same batches, so drift on a shared machine
(another process, thermal or host changes) hits every arm alike and their ratio stays meaningful."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_arms(arms: dict[str, Callable[[object], float]], warmup: object, batches: list) -> dict:
    """Mean seconds and loss per step of each arm (a function of one batch that returns its loss): the arms
    alternate on the same batches, so drift on a shared machine hits them alike, after one warm-up step each."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    losses: dict[str, list[float]] = {name: [] for name in arms}
    for timed, batch in [(False, warmup), *((True, b) for b in batches)]:
        for name, step in arms.items():
            started = time.perf_counter()
            loss = step(batch)
            if timed:
                seconds[name].append(time.perf_counter() - started)
                losses[name].append(loss)
    return {name: (statistics.mean(seconds[name]), statistics.mean(losses[name])) for name in arms}
