"""What the training benchmarks share: side-by-side timing, where arms alternate on the same batches so drift
on a shared machine (another process, thermal or host changes) hits every arm alike and their ratio stays
meaningful; the command line every one of them takes; and SFT and pre-training batches shaped like the shipped
recipe."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from contract.checkpoint import Checkpoint
from trainer.config import PretrainConfig, SFTConfig
from trainer.data import DEFAULT_DATA, Catalogue, UserSplit
from trainer.pretrain import length_bucketed_batches, lm_sequences
from trainer.sft import Example, build_examples, sft_users
from trainer.teacher import BuiltinTeacher


def bench_parser(doc: str, steps: int, steps_help: str = "timed steps per arm") -> argparse.ArgumentParser:
    """``--model``, ``--data`` and ``--steps`` (default ``steps``), with ``doc`` (the module's) as the help;
    a benchmark adds its own options before parsing."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/default"), help="checkpoint to time")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset directory")
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    return parser


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


def recipe_sft_batches(
    checkpoint: Checkpoint, catalogue: Catalogue, splits: list[UserSplit], steps: int, batch_size: int
) -> list[list[Example]]:
    """``steps`` SFT batches shaped like the shipped recipe (``SFTConfig``'s defaults) from ``steps x
    batch_size`` of the users SFT draws from, for ``checkpoint``'s tokenizer."""
    config = SFTConfig(users=steps * batch_size, batch_size=batch_size)
    teacher = BuiltinTeacher.calibrated(splits, catalogue, checkpoint.stats, users=1000)
    examples = build_examples(checkpoint, catalogue, sft_users(splits, config), teacher, config)
    return [examples[i : i + batch_size] for i in range(0, steps * batch_size, batch_size)]


def recipe_lm_batches(
    checkpoint: Checkpoint, catalogue: Catalogue, splits: list[UserSplit], count: int
) -> list[list[list[int]]]:
    """``count`` of ``init-model``'s pre-training batches (the recipe's batch size, length-bucketed), evenly spaced
    through its epoch: a step's cost (and bf16's or compiling's gain) depends on the batch's length, so a run of
    neighbouring batches (one length bucket) over- or understates the stage's."""
    epoch = length_bucketed_batches(lm_sequences(checkpoint, catalogue, splits), PretrainConfig.batch_size, seed=0)
    return epoch[:: len(epoch) // count][:count]
