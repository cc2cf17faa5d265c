"""Where a reasoning ranker loses NDCG: in the rationales it writes, or in how its answer reads them.

For the same held-out test cases as ``eval``, three scores per candidate, in plain torch (no vLLM needed,
so it also runs on a GPU machine without vLLM):

- ``served``: the rationale the service writes (greedy, the manifest's token budget), then the answer;
- ``teacher``: the built-in teacher's rationale put in its place, then the answer: the ranking the model
  would give if it recalled every piece of evidence the teacher counted;
- ``none``: the ``reasoning="none"`` score;
- ``clauses`` (no model): the best ranking the teacher's clauses alone allow (``clause_ceiling``).

``teacher`` far above ``served`` means the rationales are the bottleneck (the model cannot recall the
evidence), not the scoring head. The clause agreement says which kind of evidence it gets wrong, over all
candidates and over the positives alone (the ones that decide NDCG). The torch path matches the service's
vLLM scores: on the shipped SFT checkpoint both gave NDCG@10 0.484 (full) and 0.555 (none) on 1,000 users.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from service import contract
from service.checkpoint import open_checkpoint
from service.protocol import ItemIn
from service.ranking import prepare_prompts
from trainer.data import Catalogue, UserSplit, sample_negatives
from trainer.evaluate import EvalCase, positive_rank
from trainer.policy import grouped_forward, sample_continuations
from trainer.teacher import BuiltinTeacher, clause_kinds


@dataclass
class Diagnosis:
    ranks: dict[str, list[int]] = field(default_factory=lambda: {"served": [], "teacher": [], "none": []})
    agree: dict[str, list[int]] = field(default_factory=dict)  # clause kind -> [all agree, all, pos agree, pos]
    examples: list[dict[str, str]] = field(default_factory=list)  # a few positives: served vs teacher

    def count(self, served: str, taught: str, positive: bool) -> None:
        mine, theirs = clause_kinds(served), clause_kinds(taught)
        for kind in sorted(set(mine) | set(theirs)):
            tally = self.agree.setdefault(kind, [0, 0, 0, 0])
            same = mine.get(kind) == theirs.get(kind)
            tally[0] += same
            tally[1] += 1
            if positive:
                tally[2] += same
                tally[3] += 1


def diagnose(
    model_dir: Path, catalogue: Catalogue, cases: Sequence[EvalCase], teacher: BuiltinTeacher, batch: int = 16
) -> Diagnosis:
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = open_checkpoint(model_dir)
    encoder = checkpoint.encoder
    yes, no = checkpoint.answer_ids
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    pad = encoder.tokenizer.pad_token_id or 0
    stops = set(contract.rationale_stop_token_ids(encoder, min(model.config.vocab_size, len(encoder.tokenizer))))
    cue = encoder.encode(contract.ANSWER_CUE)
    items = lambda ids: [ItemIn(item_id=i, title=catalogue.title(i)) for i in ids]  # noqa: E731

    @torch.no_grad()
    def scores(prefixes: list[list[int]], suffixes: list[list[list[int]]]) -> list[float]:
        logp = torch.log_softmax(
            grouped_forward(model, prefixes, suffixes, pad, logits_to_keep=1).logits[:, -1].float(), -1
        )
        return (logp[:, yes] - logp[:, no]).tolist()

    def with_rationales(segments: list[list[list[int]]], texts: list[str]) -> list[list[list[int]]]:
        encoded = iter(encoder.encode_batch([contract.rationale_segment(t) for t in texts]))
        return [[segment + next(encoded) + cue for segment in group] for group in segments]

    out = Diagnosis()
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        full = [prepare_prompts(checkpoint, items(c.history), items(c.candidates), "full") for c in chunk]
        prefixes = [p.prefix_ids for p in full]
        segments = [[job.prompt_ids[len(p.prefix_ids) :] for job in p.jobs] for p in full]
        with torch.no_grad():
            generated = sample_continuations(model, prefixes, segments, pad, stops,
                                             checkpoint.manifest.max_rationale_tokens, temperature=0.0)  # fmt: skip
        served = [
            contract.rationale_text(t) for t in encoder.tokenizer.batch_decode(generated, skip_special_tokens=True)
        ]
        taught = teacher.rationales([(c.history, item) for c in chunk for item in c.candidates])
        none = [prepare_prompts(checkpoint, items(c.history), items(c.candidates), "none") for c in chunk]
        per_mode = {
            "served": iter(scores(prefixes, with_rationales(segments, served))),
            "teacher": iter(scores(prefixes, with_rationales(segments, taught))),
            "none": iter(scores([p.prefix_ids for p in none],
                                [[job.prompt_ids[len(p.prefix_ids) :] + cue for job in p.jobs] for p in none])),
        }  # fmt: skip
        texts = iter(zip(served, taught, strict=True))
        for case in chunk:
            for mode, values in per_mode.items():
                out.ranks[mode].append(
                    positive_rank([next(values) for _ in case.candidates], case.candidates, case.target)
                )
            for item in case.candidates:
                mine, theirs = next(texts)
                out.count(mine, theirs, item == case.target)
                if item == case.target and len(out.examples) < 5 and mine != theirs:
                    out.examples.append({"candidate": catalogue.title(item), "served": mine, "teacher": theirs})
    return out


def clause_ceiling(
    splits: Sequence[UserSplit],
    catalogue: Catalogue,
    teacher: BuiltinTeacher,
    cases: Sequence[EvalCase],
    calibration_users: int = 6000,
    seed: int = 1,
) -> list[int]:
    """Ranks of ``cases`` under the best use of the teacher's clauses alone: P(positive | clause kinds) counted
    on other users' validation positions (1 + 19 random negatives), ties broken at random. What a model
    that wrote the teacher's rationale and read it perfectly would score: the format's ceiling."""
    rng = random.Random(seed)
    held = {c.user_id for c in cases}
    pool = [s for s in splits if s.user_id not in held]
    items = sorted(catalogue.titles)
    positives, totals = Counter(), Counter()
    for split in rng.sample(pool, min(calibration_users, len(pool))):
        exclude = {*split.train, split.valid_target, split.test_target}
        candidates = [split.valid_target, *sample_negatives(rng, items, exclude, 19)]
        for index, rationale in enumerate(teacher.rationales([(split.train, c) for c in candidates])):
            key = tuple(sorted(clause_kinds(rationale).items()))
            totals[key] += 1
            positives[key] += index == 0
    ranks = []
    for case in cases:
        keys = [
            tuple(sorted(clause_kinds(r).items()))
            for r in teacher.rationales([(case.history, c) for c in case.candidates])
        ]
        scores = [(positives[k] + 0.05) / (totals[k] + 1) + 1e-9 * rng.random() for k in keys]
        ranks.append(positive_rank(scores, case.candidates, case.target))
    return ranks
