"""Prompt assembly: the ONE place where titles and rationales become the token ids a ranker sees.

The service (ranking and both engines) and the trainer (pre-training, SFT, RL, diagnose, eval) all build
their inputs here, so a model is trained on exactly the ids it is served with.

Ids are built segment by segment (``encode(prefix) + encode(candidate) + encode(rationale) +
encode(ANSWER_CUE)``) rather than by encoding the joined string: the history prefix is then a token-exact
shared prefix of every candidate's prompt (vLLM's prefix cache hits, the trainer runs it once per user), and
a request tokenizes its history once instead of once per candidate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Protocol

from contract import prompt
from contract.evidence import Evidence, EvidenceStats, Item, LeaveOut, compute_evidence_batch
from contract.prompt import CandidateSource, Reasoning
from contract.sequence import SequenceRanker


class Encoder(Protocol):
    """What assembly needs from a tokenizer: text -> ids without special tokens, and back."""

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_texts(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class PromptLimits:
    """How much of a request reaches the model (recorded in the checkpoint's manifest)."""

    max_history_items: int = prompt.DEFAULT_MAX_HISTORY_ITEMS
    max_history_tokens: int = prompt.DEFAULT_MAX_HISTORY_TOKENS
    max_title_tokens: int = prompt.DEFAULT_MAX_TITLE_TOKENS


@dataclass(frozen=True)
class HistoryPrefix:
    text: str  # the rendered prefix: what the score cache keys on
    ids: list[int]  # every candidate prompt of the request starts with these ids


@dataclass(frozen=True)
class RequestPrompts:
    """One user's candidates as prompts: a shared history prefix and one segment per candidate."""

    prefix: HistoryPrefix
    history: list[Item]  # as the model sees it (cleaned, capped), oldest first: the last one is #1
    candidates: list[Item]  # as the model sees them (cleaned, cut to the title budget)
    evidence: list[Evidence]  # per candidate, what its Evidence line states
    segment_texts: list[str]  # per candidate, the text after the prefix (candidate, evidence, cue)
    segments: list[list[int]]  # per candidate, the ids of that text
    reasoning: Reasoning
    answer_segments: list[list[int]]  # per candidate, the reasoning="none" segment: the answer read from evidence alone

    @property
    def candidate_titles(self) -> list[str]:
        return [c.title for c in self.candidates]

    def prompt_ids(self, index: int) -> list[int]:
        """The prompt of candidate ``index``: where the rationale is generated (full) or the answer read (none)."""
        return self.prefix.ids + self.segments[index]

    def evidence_only_ids(self, index: int) -> list[int]:
        """Candidate ``index``'s ``reasoning="none"`` prompt (the same inputs without a rationale): where the
        answer is read when a generated rationale may not be shown."""
        return self.prefix.ids + self.answer_segments[index]


def truncate_all_to_tokens(texts: Sequence[str], encoder: Encoder, max_tokens: int) -> list[str]:
    """Cut each text to at most ``max_tokens`` tokens, on a token boundary, with one batched tokenizer call."""
    out = list(texts)
    for i, ids in enumerate(encoder.encode_batch(out) if out else []):
        if len(ids) > max_tokens:
            out[i] = encoder.decode(ids[:max_tokens]).strip()
    return out


def select_history(
    titles: Sequence[str],
    encoder: Encoder | None,
    max_items: int = prompt.DEFAULT_MAX_HISTORY_ITEMS,
    max_tokens: int = prompt.DEFAULT_MAX_HISTORY_TOKENS,
) -> list[str]:
    """The most recent titles that fit both caps, still oldest first (recency matters most for what is next,
    so items are dropped from the old end). Without an encoder only the item cap applies."""
    recent = list(titles[-max_items:]) if max_items > 0 else []
    if encoder is None or not recent:
        return recent
    lines = [prompt.history_line(len(recent) - i, t) for i, t in enumerate(recent)]  # the latest is #1
    costs = [len(ids) for ids in encoder.encode_batch(lines)]
    kept: list[str] = []
    budget = max_tokens
    for title, cost in zip(reversed(recent), reversed(costs), strict=True):
        if cost > budget:
            break
        kept.append(title)
        budget -= cost
    kept.reverse()
    return kept


def answer_token_ids(encoder: Encoder) -> tuple[int, int]:
    """The ids of ``" yes"`` and ``" no"``; each must be exactly one token for the score to be defined."""
    ids = []
    for text in prompt.ANSWER_TOKENS:
        encoded = encoder.encode(text)
        if len(encoded) != 1:
            raise prompt.ContractError(
                f"answer token {text!r} encodes to {len(encoded)} tokens {encoded}; it must be exactly one. "
                "Train the tokenizer with the contract strings (r2rank-train init-model does) or pick a "
                "base model whose vocabulary has it."
            )
        ids.append(encoded[0])
    if ids[0] == ids[1]:
        raise prompt.ContractError("the yes and no answer tokens encode to the same id")
    return ids[0], ids[1]


class PromptAssembler:
    """Token ids of every part of the prompt for one tokenizer, one checkpoint's limits and its evidence (and
    its sequence model, whose rank the evidence states where the checkpoint ships one)."""

    def __init__(
        self,
        encoder: Encoder,
        limits: PromptLimits,
        answer_ids: tuple[int, int],
        stats: EvidenceStats,
        sequence: SequenceRanker | None = None,
    ) -> None:
        self.encoder = encoder
        self.limits = limits
        self.answer_ids = answer_ids  # (yes, no)
        self.stats = stats
        self.sequence = sequence
        self.answer_cue_ids = encoder.encode(prompt.ANSWER_CUE)
        specials = sorted((s for s in encoder.special_texts if s), key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, specials))) if specials else None

    # --- prompts ----------------------------------------------------------------------------------------
    def prompts(
        self,
        history: Sequence[Item],
        candidates: Sequence[Item],
        reasoning: Reasoning,
        leave_out: LeaveOut | None = None,
        source: CandidateSource = "catalogue",
    ) -> RequestPrompts:
        """A request's prompts from raw (untrusted) items, oldest history first.

        Titles are cleaned and cut to the title budget in one tokenizer call; the history keeps the most
        recent items that fit the item and token caps (empty titles leave it); each candidate's evidence is
        computed against that history (``leave_out``: a training example's own user, see
        ``contract.evidence``; the next-item rank too, from the history the prompt shows); ``source`` says where
        the candidates come from (``prompt.CandidateSource``)."""
        kept, shown = self._select(history, candidates)
        text = prompt.history_prefix([item.title for item in kept], source)
        evidence = compute_evidence_batch(kept, shown, self.stats, leave_out, self.sequence)
        texts = [prompt.candidate_segment(c.title, e.text(), reasoning) for c, e in zip(shown, evidence, strict=True)]
        prefix = HistoryPrefix(text, self.encoder.encode(text))
        segments = self.encoder.encode_batch(texts)
        if reasoning == "none":
            answer_segments = segments
        else:
            none_texts = [
                prompt.candidate_segment(c.title, e.text(), "none") for c, e in zip(shown, evidence, strict=True)
            ]
            answer_segments = self.encoder.encode_batch(none_texts)
        return RequestPrompts(prefix, kept, shown, evidence, texts, segments, reasoning, answer_segments)

    def with_sequence(self, sequence: SequenceRanker | None) -> PromptAssembler:
        """The same assembler with another sequence model: a training example's next-item rank must come from
        a model that never saw its target (``trainer.seqrec`` horizons)."""
        return PromptAssembler(self.encoder, self.limits, self.answer_ids, self.stats, sequence)

    def _plain(self, text: str) -> str:
        """``text`` without the tokenizer's special-token strings (they would encode as control tokens), each replaced
        by a space, so no word or cue is glued to its neighbour; where cutting them out would join halves into
        another special token (``<|endof<|endoftext|>text|>``), they are cut out so the next pass removes it."""
        if self._special is None or "<" not in text:
            return text
        joined = self._special.sub("", text)
        return joined if self._special.search(joined) else self._special.sub(" ", text)

    def clean_title(self, title: str) -> str:
        """``prompt.clean_title`` and the tokenizer's special-token strings removed, after look-alikes are folded
        (``＜|endoftext|＞`` is the end-of-text token once NFKC-folded) and until nothing changes (removing a cue
        can join the halves of a special token, and the other way round)."""
        return prompt.until_unchanged(lambda text: prompt.clean_title(self._plain(text)), prompt.fold(title))

    def history_prefix(self, history: Sequence[Item]) -> HistoryPrefix:
        """The shared prefix alone (LM pre-training reads histories as the service renders them)."""
        kept, _ = self._select(history, [])
        text = prompt.history_prefix([item.title for item in kept])
        return HistoryPrefix(text, self.encoder.encode(text))

    def _select(self, history: Sequence[Item], candidates: Sequence[Item]) -> tuple[list[Item], list[Item]]:
        """Cleaned items, titles cut to the budget (one tokenizer call); the history capped by items and tokens."""
        recent = list(history[-self.limits.max_history_items :])
        cleaned = [self.clean_title(item.title) for item in (*recent, *candidates)]
        safe = truncate_all_to_tokens(cleaned, self.encoder, self.limits.max_title_tokens)
        titled = [replace(item, title=title) for item, title in zip((*recent, *candidates), safe, strict=True)]
        history_items = [item for item in titled[: len(recent)] if item.title]
        kept_titles = select_history([item.title for item in history_items], self.encoder,
                                     self.limits.max_history_items, self.limits.max_history_tokens)  # fmt: skip
        kept = history_items[len(history_items) - len(kept_titles) :]
        return kept, titled[len(recent) :]

    # --- after the prompt -------------------------------------------------------------------------------
    def rationale_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each rationale (generated text, or a teacher's) as the ids that follow ``Reasoning:``: cut at the
        first stop, cleaned to one line, re-encoded. What the answer is conditioned on, in training and serving."""
        return self.encoder.encode_batch([prompt.rationale_segment(text) for text in texts])

    def score_input(self, ids: Sequence[int], rationale_ids: Sequence[int] = ()) -> list[int]:
        """``ids`` (a prompt, or a candidate segment) + the rationale's ids (none in ``reasoning="none"``) +
        the answer cue: the sequence whose last position holds the answer distribution."""
        return [*ids, *rationale_ids, *self.answer_cue_ids]

    def answer_id(self, label: bool) -> int:
        """The supervised answer token (trainer only)."""
        return self.answer_ids[0] if label else self.answer_ids[1]

    @cached_property
    def stop_ids(self) -> list[int]:
        """Every token id whose text contains the rationale stop (a newline), over the whole vocabulary.

        Stopping on token ids lets an engine skip incremental detokenization while it generates (the text is
        cut at the first newline by ``prompt.rationale_text``). Vocabularies that merge newlines with
        punctuation (Qwen's ".\\n") are covered because every such token is listed. Computed once (a pass
        over the vocabulary: about a second for a 150k-token one)."""
        decode = self.encoder.decode
        return [i for i in range(self.encoder.vocab_size) if prompt.RATIONALE_STOP in decode([i])]

    @staticmethod
    def rationale(generated: str) -> str:
        """The rationale text a generation stands for (what the service returns to the caller)."""
        return prompt.rationale_text(generated)

    @staticmethod
    def score(logprob_yes: float, logprob_no: float) -> float:
        return prompt.score_from_logprobs(logprob_yes, logprob_no)
