"""The prompt format: the strings a ranker is trained on and served with, and how its answer becomes a score.

Changing anything below changes the meaning of every trained checkpoint, so it must come with a new
``PROMPT_FORMAT`` (checkpoints record the format they were trained on; ``contract.checkpoint`` refuses
others). Token ids are built from these strings by ``contract.assembly`` only.

Layout of one item prompt (``reasoning="full"``)::

    <INSTRUCTION>
    History (oldest first):
    - <title 1>
    - <title n>                      <- shared prefix: identical for every candidate of a user
    Candidate: <candidate title>
    Reasoning: <rationale, generated, ends at RATIONALE_STOP>
    Answer: yes|no                   <- score = log P(" yes") - log P(" no") at this position

With ``reasoning="none"`` the ``Reasoning:`` line is left out and the answer position follows the
candidate directly.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Literal

PROMPT_FORMAT = "r2rank-pointwise-v1"
"""Version of everything in this module. Bump it when any string or rule below changes."""

SUPPORTED_PROMPT_FORMATS: frozenset[str] = frozenset({PROMPT_FORMAT})

Reasoning = Literal["full", "none"]
REASONING_MODES: tuple[Reasoning, ...] = ("full", "none")

INSTRUCTION = (
    "Decide whether the user will interact with the candidate item next, given the items they interacted with before."
)
HISTORY_HEADER = "History (oldest first):"
HISTORY_BULLET = "- "
EMPTY_HISTORY = "(no history)"
CANDIDATE_CUE = "Candidate:"
RATIONALE_CUE = "\nReasoning:"
RATIONALE_STOP = "\n"
"""The rationale is one line: generation stops at the first newline."""
ANSWER_CUE = "\nAnswer:"
ANSWER_YES = " yes"
ANSWER_NO = " no"
ANSWER_TOKENS: tuple[str, str] = (ANSWER_YES, ANSWER_NO)

DEFAULT_MAX_HISTORY_ITEMS = 20
DEFAULT_MAX_HISTORY_TOKENS = 512
DEFAULT_MAX_TITLE_TOKENS = 48
DEFAULT_MAX_RATIONALE_TOKENS = 32

_CONTROL_OR_SPACE = re.compile(r"\s+")


class ContractError(ValueError):
    """A checkpoint or tokenizer that cannot speak this contract."""


def clean_title(title: str) -> str:
    """Make untrusted item text safe to splice into a prompt.

    Newlines and other control characters would let a title end its line early and forge the
    ``Answer:`` or ``Candidate:`` cue; every control/format character becomes a space, whitespace runs
    collapse to one space, and the result is NFC-normalised and stripped.
    """
    if title.isascii() and title.isprintable():  # the common case: only spaces to collapse
        return _CONTROL_OR_SPACE.sub(" ", title).strip()
    normalised = unicodedata.normalize("NFC", title)
    visible = "".join(" " if unicodedata.category(ch)[0] in ("C", "Z") else ch for ch in normalised)
    return _CONTROL_OR_SPACE.sub(" ", visible).strip()


def clean_rationale(text: str) -> str:
    """A rationale is a single line of text; the same cleaning as titles keeps it so."""
    return clean_title(text)


def history_prefix(history_titles: list[str] | tuple[str, ...]) -> str:
    """The shared part of every item prompt of one user: instruction + history (oldest first)."""
    lines = "".join(history_line(title) for title in history_titles) if history_titles else f"{EMPTY_HISTORY}\n"
    return f"{INSTRUCTION}\n{HISTORY_HEADER}\n{lines}"


def history_line(title: str) -> str:
    """One history entry as it appears in the prefix (its token cost is what the history budget counts)."""
    return f"{HISTORY_BULLET}{title}\n"


def candidate_segment(candidate_title: str, reasoning: Reasoning) -> str:
    """The per-item part after the prefix; in ``full`` mode it ends where the rationale starts."""
    if reasoning not in REASONING_MODES:
        raise ValueError(f"reasoning must be one of {REASONING_MODES}, got {reasoning!r}")
    line = f"{CANDIDATE_CUE} {candidate_title}"
    return line + RATIONALE_CUE if reasoning == "full" else line


def rationale_text(generated: str) -> str:
    """The rationale a generation (or a teacher's text) stands for: the text before the first stop, cleaned."""
    return clean_rationale(generated.split(RATIONALE_STOP, 1)[0])


def rationale_segment(rationale: str) -> str:
    """How a rationale sits after ``Reasoning:``: one space, then the single-line text."""
    text = rationale_text(rationale)
    return f" {text}" if text else ""


def score_from_logprobs(logprob_yes: float, logprob_no: float) -> float:
    """The ranking score: log-odds of yes vs no at the answer position.

    This equals ``(w_yes - w_no) · h`` on the final hidden state ``h`` — a linear scoring head — and is
    invariant to everything else in the vocabulary. Non-finite inputs (a token with zero probability
    under float underflow) are clamped so the ranking stays total.
    """
    floor = -1e4
    yes = logprob_yes if math.isfinite(logprob_yes) else floor
    no = logprob_no if math.isfinite(logprob_no) else floor
    return float(yes - no)


def check_prompt_format(prompt_format: str) -> None:
    """Refuse a checkpoint trained on a format this code does not speak."""
    if prompt_format not in SUPPORTED_PROMPT_FORMATS:
        raise ContractError(
            f"checkpoint prompt_format {prompt_format!r} is not supported by this r2rank "
            f"(supported: {sorted(SUPPORTED_PROMPT_FORMATS)}); retrain/export the checkpoint with this "
            "version of r2rank-train, or run the r2rank version that made it."
        )
