"""Where a reasoning ranker loses NDCG: in the rationales it writes, or in how its answer reads them.

For the same held-out test cases as ``eval``, three scores per candidate, in plain torch (no vLLM needed,
so it also runs on a GPU machine without vLLM):

- ``served``: the rationale the service writes (greedy, the manifest's token budget), then the answer;
- ``teacher``: the built-in teacher's rationale put in its place, then the answer: the ranking the model
  would give if it weighed the evidence as the teacher does;
- ``none``: the ``reasoning="none"`` score;
- ``clauses`` (no model): the best ranking the teacher's clauses alone allow (``clause_ceiling``).

``teacher`` far above ``served`` means the rationales are the bottleneck, not the scoring head. The clause
agreement says which kind of judgment it gets wrong, over all candidates and over the positives alone (the
ones that decide NDCG). The torch path computes what the service's vLLM engine does (same ids, the
contract's assembler).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from contract.checkpoint import open_checkpoint
from contract.evidence import EvidenceStats, Item, compute_evidence
from contract.sequence import SequenceRanker
from trainer.data import Catalogue, UserSplit, sample_negatives
from trainer.evaluation.cases import EvalCase
from trainer.evaluation.metrics import positive_rank
from trainer.policy import grouped_forward, sample_continuations
from trainer.progress import Progress
from trainer.rl import Prompted
from trainer.teacher import BuiltinTeacher, TeacherInput, clause_kinds


@dataclass
class Diagnosis:
    ranks: dict[str, list[int]] = field(default_factory=lambda: {"served": [], "teacher": [], "none": []})
    agree: dict[str, list[int]] = field(default_factory=dict)  # clause kind -> [all agree, all, pos agree, pos]
    examples: list[dict[str, str]] = field(default_factory=list)  # a few positives: served vs teacher

    def count(self, served: str, taught: str, positive: bool) -> None:
        theirs = clause_kinds(taught)
        for kind, value in clause_kinds(served).items():
            tally = self.agree.setdefault(kind, [0, 0, 0, 0])
            same = value == theirs[kind]
            tally[0] += same
            tally[1] += 1
            if positive:
                tally[2] += same
                tally[3] += 1


def diagnose(
    model_dir: Path, catalogue: Catalogue, cases: Sequence[EvalCase], teacher: BuiltinTeacher, batch: int = 16
) -> Diagnosis:
    from trainer.attention import load_causal_lm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = open_checkpoint(model_dir)
    assembler = checkpoint.prompts
    yes, no = checkpoint.answer_ids
    model = load_causal_lm(model_dir, device).eval()
    pad = checkpoint.encoder.pad_token_id
    stops = set(assembler.stop_ids)
    items = lambda ids: [Item(i, catalogue.title(i)) for i in ids]  # noqa: E731

    def with_rationales(segments: list[list[int]], texts: list[str]) -> list[list[int]]:
        encoded = assembler.rationale_ids(texts)
        return [assembler.score_input(segment, rationale) for segment, rationale in zip(segments, encoded, strict=True)]

    out = Diagnosis()
    progress = Progress("diagnose", len(cases), every=max(1, len(cases) // 10), unit="users")
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        # the service's prompts for both modes (evidence included), the history prefix shared
        full = [assembler.prompts(items(c.history), items(c.candidates), "full") for c in chunk]
        none = [assembler.prompts(items(c.history), items(c.candidates), "none") for c in chunk]
        prompted = [Prompted(f.prefix.ids, f.segments, n.segments, 0) for f, n in zip(full, none, strict=True)]
        prefixes = [p.prefix for p in prompted]
        with torch.no_grad():
            generated = sample_continuations(model, prefixes, [p.segments for p in prompted], pad, stops,
                                             checkpoint.manifest.max_rationale_tokens, temperature=0.0)  # fmt: skip
        decoded = checkpoint.encoder.tokenizer.batch_decode(generated, skip_special_tokens=True)
        served = iter(assembler.rationale(t) for t in decoded)
        pairs = []  # per user: (served, teacher) rationale per candidate
        rows = []  # per user: served rows, teacher rows, none rows; one packed forward runs each prefix once
        for p, shown in zip(prompted, full, strict=True):
            mine = [next(served) for _ in p.segments]
            inputs = zip(shown.candidates, shown.evidence, strict=True)
            taught = teacher.rationales([TeacherInput(shown.history, candidate, ev) for candidate, ev in inputs])
            pairs.append(list(zip(mine, taught, strict=True)))
            rows.append(with_rationales(p.segments, mine) + with_rationales(p.segments, taught)
                        + [assembler.score_input(segment) for segment in p.none_segments])  # fmt: skip
        with torch.no_grad():
            logp = torch.log_softmax(
                grouped_forward(model, prefixes, rows, pad, logits_to_keep=1).logits[:, -1].float(), -1
            )
        values = iter((logp[:, yes] - logp[:, no]).tolist())
        for case, texts in zip(chunk, pairs, strict=True):
            for mode in ("served", "teacher", "none"):  # the order of each user's rows above
                out.ranks[mode].append(
                    positive_rank([next(values) for _ in case.candidates], case.candidates, case.target)
                )
            for item, (mine, theirs) in zip(case.candidates, texts, strict=True):
                out.count(mine, theirs, item == case.target)
                if item == case.target and len(out.examples) < 5 and mine != theirs:
                    out.examples.append({"candidate": catalogue.title(item), "served": mine, "teacher": theirs})
        progress.update(start + len(chunk))
    return out


def clause_ceiling(
    splits: Sequence[UserSplit],
    catalogue: Catalogue,
    stats: EvidenceStats,
    teacher: BuiltinTeacher,
    cases: Sequence[EvalCase],
    calibration_users: int = 6000,
    seed: int = 1,
    sequence: SequenceRanker | None = None,
) -> list[int]:
    """Ranks of ``cases`` under the best use of the teacher's clauses alone: P(positive | clause kinds) counted
    on other users' validation positions (1 + 19 random negatives), ties broken at random. What a model
    that wrote the teacher's rationale and read it perfectly would score: the format's ceiling."""
    rng = random.Random(seed)
    held = {c.user_id for c in cases}
    pool = [s for s in splits if s.user_id not in held]
    items = sorted(catalogue.titles)
    item = lambda i: Item(i, catalogue.title(i))  # noqa: E731

    def rationales(history: Sequence[str], candidates: Sequence[str]) -> list[str]:
        shown = [item(i) for i in history]
        pairs = [TeacherInput(shown, item(c), compute_evidence(shown, item(c), stats, sequence=sequence))
                 for c in candidates]  # fmt: skip
        return teacher.rationales(pairs)

    positives, totals = Counter(), Counter()
    for split in rng.sample(pool, min(calibration_users, len(pool))):
        exclude = {*split.train, split.valid_target, split.test_target}
        candidates = [split.valid_target, *sample_negatives(rng, items, exclude, 19)]
        for index, rationale in enumerate(rationales(split.train, candidates)):
            key = tuple(sorted(clause_kinds(rationale).items()))
            totals[key] += 1
            positives[key] += index == 0
    ranks = []
    for case in cases:
        keys = [tuple(sorted(clause_kinds(r).items())) for r in rationales(case.history, case.candidates)]
        scores = [(positives[k] + 0.05) / (totals[k] + 1) + 1e-9 * rng.random() for k in keys]
        ranks.append(positive_rank(scores, case.candidates, case.target))
    return ranks
