"""The prompt/score contract shared by the service and the trainer.

Everything that decides *what the model sees* and *how its answer becomes a score* lives here and only
here: the trainer fits a model to exactly these strings and the service scores with exactly these strings.
Changing anything below changes the meaning of every trained checkpoint, so it must come with a new
``PROMPT_FORMAT`` string (checkpoints record the format they were trained on; the service refuses others).

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

Token ids are built segment by segment (``encode(prefix) + encode(candidate) + encode(rationale) +
encode(ANSWER_CUE)``) rather than by encoding the joined string: this makes the history prefix a
token-exact shared prefix (so vLLM's prefix cache hits) and lets the service tokenize a user's history
once per request instead of once per candidate. This module imports neither a web framework nor an
engine.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Literal, Protocol

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


class Encoder(Protocol):
    """What the contract needs from a tokenizer: text -> ids without special tokens, and back."""

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


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


def truncate_to_tokens(text: str, encoder: Encoder, max_tokens: int) -> str:
    """Cut ``text`` to at most ``max_tokens`` tokens (on a token boundary)."""
    return truncate_all_to_tokens([text], encoder, max_tokens)[0]


def truncate_all_to_tokens(texts: Sequence[str], encoder: Encoder, max_tokens: int) -> list[str]:
    """``truncate_to_tokens`` for many texts with one batched tokenizer call (the hot path of a request)."""
    out = list(texts)
    for i, ids in enumerate(encoder.encode_batch(out) if out else []):
        if len(ids) > max_tokens:
            out[i] = encoder.decode(ids[:max_tokens]).strip()
    return out


def select_history(
    titles: Sequence[str],
    encoder: Encoder | None = None,
    max_items: int = DEFAULT_MAX_HISTORY_ITEMS,
    max_tokens: int = DEFAULT_MAX_HISTORY_TOKENS,
) -> list[str]:
    """The most recent titles that fit both caps, still oldest first.

    Recency matters most for next-item prediction, so items are dropped from the old end. Without an
    encoder only the item cap applies (the trainer's statistics code uses that).
    """
    recent = list(titles[-max_items:]) if max_items > 0 else []
    if encoder is None or not recent:
        return recent
    costs = [len(ids) for ids in encoder.encode_batch([f"{HISTORY_BULLET}{title}\n" for title in recent])]
    kept: list[str] = []
    budget = max_tokens
    for title, cost in zip(reversed(recent), reversed(costs), strict=True):
        if cost > budget:
            break
        kept.append(title)
        budget -= cost
    kept.reverse()
    return kept


def history_prefix(history_titles: Sequence[str]) -> str:
    """The shared part of every item prompt of one user: instruction + history (oldest first)."""
    if history_titles:
        lines = "".join(f"{HISTORY_BULLET}{title}\n" for title in history_titles)
    else:
        lines = f"{EMPTY_HISTORY}\n"
    return f"{INSTRUCTION}\n{HISTORY_HEADER}\n{lines}"


def candidate_segment(candidate_title: str, reasoning: Reasoning) -> str:
    """The per-item part after the prefix; in ``full`` mode it ends where the rationale starts."""
    if reasoning not in REASONING_MODES:
        raise ValueError(f"reasoning must be one of {REASONING_MODES}, got {reasoning!r}")
    line = f"{CANDIDATE_CUE} {candidate_title}"
    return line + RATIONALE_CUE if reasoning == "full" else line


def rationale_segment(rationale: str) -> str:
    """How a rationale sits after ``Reasoning:``: one space, then the single-line text."""
    text = clean_rationale(rationale)
    return f" {text}" if text else ""


def answer_segment(label: bool) -> str:
    """The supervised answer (trainer only): the answer cue followed by yes or no."""
    return ANSWER_CUE + (ANSWER_YES if label else ANSWER_NO)


def build_score_text(
    history_titles: Sequence[str], candidate_title: str, reasoning: Reasoning, rationale: str = ""
) -> list[str]:
    """The text segments, in order, whose concatenated encodings form the scored input.

    Both packages build token ids as ``sum(encode(s) for s in segments)``: the trainer appends
    ``encode(" yes"|" no")`` as its target, the service reads the next-token log-probs instead.
    """
    segments = [history_prefix(history_titles), candidate_segment(candidate_title, reasoning)]
    if reasoning == "full":
        segments.append(rationale_segment(rationale))
    segments.append(ANSWER_CUE)
    return segments


def encode_segments(encoder: Encoder, segments: Sequence[str]) -> list[int]:
    """Encode each segment separately and concatenate (see the module docstring for why)."""
    ids: list[int] = []
    for segment in segments:
        if segment:
            ids.extend(encoder.encode(segment))
    return ids


def answer_token_ids(encoder: Encoder) -> tuple[int, int]:
    """The ids of ``" yes"`` and ``" no"``; each must be exactly one token for the score to be defined."""
    ids = []
    for text in ANSWER_TOKENS:
        encoded = encoder.encode(text)
        if len(encoded) != 1:
            raise ContractError(
                f"answer token {text!r} encodes to {len(encoded)} tokens {encoded}; it must be exactly one. "
                "Train the tokenizer with the contract strings (r2rank-train init-model does) or pick a "
                "base model whose vocabulary has it."
            )
        ids.append(encoded[0])
    if ids[0] == ids[1]:
        raise ContractError("the yes and no answer tokens encode to the same id")
    return ids[0], ids[1]


def rationale_stop_token_ids(encoder: Encoder, vocab_size: int | None = None) -> list[int]:
    """Every token id whose text contains the rationale stop (a newline).

    Stopping on token ids lets an engine skip incremental detokenization while it generates (the text is
    decoded once at the end and cut at the first newline by ``rationale_text``). Vocabularies that merge
    newlines with punctuation (Qwen's ".\n") are covered because every such token is listed. Without
    ``vocab_size`` only the bare newline token is returned.
    """
    if vocab_size is None:
        encoded = encoder.encode(RATIONALE_STOP)
        return encoded if len(encoded) == 1 else []
    return [i for i in range(vocab_size) if RATIONALE_STOP in encoder.decode([i])]


def rationale_text(generated: str) -> str:
    """The rationale a generation stands for: the text before the first stop, cleaned."""
    return clean_rationale(generated.split(RATIONALE_STOP, 1)[0])


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
