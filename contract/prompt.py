"""The prompt format: the strings a ranker is trained on and served with, and how its answer becomes a score.

Changing anything below changes the meaning of every trained checkpoint, so it must come with a new
``PROMPT_FORMAT`` (checkpoints record the format they were trained on; ``contract.checkpoint`` refuses
others). Token ids are built from these strings by ``contract.assembly`` only.

Layout of one item prompt (``reasoning="full"``)::

    <INSTRUCTION>
    History (oldest first):
    #3 <title>
    #2 <title>
    #1 <title>                       <- shared prefix: identical for every candidate of a user (#1 = latest)
    Candidates: a recommender's top picks for this user   <- only where the request says so (candidate_source)
    Candidate: <candidate title>
    Evidence: next-item rank 37; follows #1 14x, older 2x; co-bought 45x; popularity 812 (top 3%); shares "zelda"
      with #2                        <- one line
    Reasoning: <rationale, generated, ends at RATIONALE_STOP>
    Answer: yes|no                   <- score = log P(" yes") - log P(" no") at this position

With ``reasoning="none"`` the ``Reasoning:`` line is left out and the answer position follows the evidence
directly: both modes see the same inputs. The evidence (``contract.evidence``) is computed from training
interactions; history items are referred to by ``#k``, so a rationale can cite them and be checked.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from typing import Literal

PROMPT_FORMAT = "r2rank-grounded-v5"
"""Version of everything in this module and of the evidence line. Bump it when any string or rule changes.
v5 states the co-purchases (``co-bought 45x``) beside the sequence model's next-item rank (v3) on the evidence
line (``contract.evidence``). (v4, the rank's band, was an experiment never shipped: its name is not reused.)"""

PROMPT_FORMAT_WITHOUT_SEQUENCE = "r2rank-grounded-v5-no-rank"
"""v5's text without the next-item rank: a checkpoint that ships no sequence model (e.g. ``init-model``'s)."""

PROMPT_FORMAT_V3 = "r2rank-grounded-v3"
"""v5's text without the co-purchases: what a checkpoint whose statistics count none was trained on."""

PROMPT_FORMAT_V2 = "r2rank-grounded-v2"
"""v3's text without the next-item rank."""

_FORMATS: dict[tuple[bool, bool], str] = {
    (True, True): PROMPT_FORMAT, (False, True): PROMPT_FORMAT_WITHOUT_SEQUENCE,
    (True, False): PROMPT_FORMAT_V3, (False, False): PROMPT_FORMAT_V2,
}  # fmt: skip

SUPPORTED_PROMPT_FORMATS: frozenset[str] = frozenset(_FORMATS.values())
"""Older formats stay served (a checkpoint's prompts are exactly what it was trained on): which one a checkpoint
reads follows from what it ships (``prompt_format_for``), so a v3 checkpoint keeps v3's text through refresh,
RL and export."""


def prompt_format_for(has_sequence_model: bool, has_co_bought: bool) -> str:
    """The format a checkpoint is trained on: the next-item rank is on its evidence line iff it ships a sequence
    model, the co-purchases iff its statistics count them."""
    return _FORMATS[(has_sequence_model, has_co_bought)]


def format_states(prompt_format: str) -> tuple[bool, bool]:
    """What a supported format's evidence line states: (the next-item rank, co-purchases)."""
    return next(states for states, name in _FORMATS.items() if name == prompt_format)


Reasoning = Literal["full", "none"]
REASONING_MODES: tuple[Reasoning, ...] = ("full", "none")

CandidateSource = Literal["catalogue", "retrieval"]
"""Where a request's candidates come from. ``catalogue`` (the default; the prompt says nothing): any items, such as
random ones; the score is P(next | evidence) against the catalogue. ``retrieval``: a recommender's top picks for
this user, such as a SASRec's, so every candidate already carries the evidence such a model picks by (a good
next-item rank) and the model must weigh what separates the real next item from them. A checkpoint lists the
sources it was trained on (``Manifest.candidate_sources``); the line below is in the prompt only for
``retrieval``, so a ``catalogue`` prompt is the same text every format has always had."""
CANDIDATE_SOURCES: tuple[CandidateSource, ...] = ("catalogue", "retrieval")
RETRIEVAL_LINE = "Candidates: a recommender's top picks for this user\n"

INSTRUCTION = (
    "Decide whether the user will interact with the candidate item next, given the items they interacted with "
    "before (#1 is the latest) and the evidence from other users."
)
HISTORY_HEADER = "History (oldest first):"
EMPTY_HISTORY = "(no history)"
CANDIDATE_CUE = "Candidate:"
EVIDENCE_CUE = "\nEvidence:"
RATIONALE_CUE = "\nReasoning:"
RATIONALE_STOP = "\n"
"""The rationale is one line: generation stops at the first newline."""
ANSWER_CUE = "\nAnswer:"
ANSWER_YES = " yes"
ANSWER_NO = " no"
ANSWER_TOKENS: tuple[str, str] = (ANSWER_YES, ANSWER_NO)

DEFAULT_MAX_HISTORY_ITEMS = 20
DEFAULT_MAX_HISTORY_TOKENS = 320  # with the title cap, bounds what a long-title catalogue costs (docs/training.md)
DEFAULT_MAX_TITLE_TOKENS = 32
DEFAULT_MAX_RATIONALE_TOKENS = 32

_CONTROL_OR_SPACE = re.compile(r"\s+")
_CUE_PHRASE = re.compile(
    r"\b(?:candidate|evidence|reasoning|answer|history(?:\s*\(oldest first\))?)\s*:\s*(?:(?:yes|no)\b)?", re.IGNORECASE
)


class ContractError(ValueError):
    """A checkpoint or tokenizer that cannot speak this contract."""


def fold(text: str) -> str:
    """NFKC-fold look-alikes (fullwidth ``Ａｎｓｗｅｒ：``, ``＜|endoftext|＞``) to the plain characters and turn
    every control or format character into a space. Runs before anything is stripped, so no later step can be
    fooled by a look-alike of what it strips."""
    if text.isascii() and text.isprintable():  # the common case needs no Unicode work
        return text
    normalised = unicodedata.normalize("NFKC", text)
    return "".join(" " if unicodedata.category(ch)[0] in ("C", "Z") else ch for ch in normalised)


def until_unchanged(step: Callable[[str], str], text: str) -> str:
    """Apply ``step`` until the text stops changing: removing one forged piece can join the halves of another.
    Ends because every ``step`` that changes a text makes it shorter."""
    while (cleaned := step(text)) != text:
        text = cleaned
    return text


def clean_title(title: str) -> str:
    """Make untrusted item text safe to splice into a prompt: text, never control.

    Newlines and other control characters would let a title end its line early and forge a cue: ``fold``
    makes them spaces (and look-alikes plain), and whitespace runs collapse to one. The cue phrases the prompt
    uses (``Answer: yes``, ``Reasoning:``, ``Evidence:``...) are then removed wherever they stand, again until
    none is left, since removing one can join the pieces of another (``Answer Evidence:: yes``). (Special-token
    text such as ``<|endoftext|>`` depends on the tokenizer: ``PromptAssembler`` strips it, in the same loop.)
    """
    return until_unchanged(_strip_cues, fold(title))


def _strip_cues(title: str) -> str:
    return _CONTROL_OR_SPACE.sub(" ", _CUE_PHRASE.sub(" ", title) if ":" in title else title).strip()


def clean_rationale(text: str) -> str:
    """A rationale is a single line of text; the same cleaning as titles keeps it so."""
    return clean_title(text)


def history_prefix(history_titles: list[str] | tuple[str, ...], source: CandidateSource = "catalogue") -> str:
    """The shared part of every item prompt of one user: instruction + history, oldest first, the latest #1; then,
    for retrieved candidates, the line that says so (shared by every candidate of the request)."""
    if source not in CANDIDATE_SOURCES:
        raise ValueError(f"candidate source must be one of {CANDIDATE_SOURCES}, got {source!r}")
    n = len(history_titles)
    lines = "".join(history_line(n - i, t) for i, t in enumerate(history_titles)) if n else f"{EMPTY_HISTORY}\n"
    return f"{INSTRUCTION}\n{HISTORY_HEADER}\n{lines}" + (RETRIEVAL_LINE if source == "retrieval" else "")


def history_line(ref: int, title: str) -> str:
    """One history entry as it appears in the prefix (its token cost is what the history budget counts)."""
    return f"#{ref} {title}\n"


def candidate_segment(candidate_title: str, evidence: str, reasoning: Reasoning) -> str:
    """The per-item part after the prefix: the candidate and its evidence; in ``full`` mode it ends where the
    rationale starts."""
    if reasoning not in REASONING_MODES:
        raise ValueError(f"reasoning must be one of {REASONING_MODES}, got {reasoning!r}")
    text = f"{CANDIDATE_CUE} {candidate_title}{EVIDENCE_CUE} {evidence}"
    return text + RATIONALE_CUE if reasoning == "full" else text


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
