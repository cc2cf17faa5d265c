"""Offline evaluation: NDCG@10, HR@5/10 and MRR with 95% bootstrap CIs on held-out users; rationale faithfulness.

Protocol (the paper's): per user, history = everything before the target; candidates = the target + N
negatives (random, popularity-weighted, or a retriever's list such as ``Games-6k.sasrec``), never an item of
the user's history. Two splits:
- ``selection``: the VALIDATION positions of the selection users (``data.selection_users``, never trained on
  by RL): where runs and checkpoints are compared and chosen;
- ``test``: the test positions of sampled users: the report on the model chosen, made once.
Baselines use training-split statistics, except ``popularity (all pre-test)``, which also counts validation
items. The model is scored through the SAME code path as the service — ``Ranker`` over the in-process vLLM
engine, evidence included — so offline numbers are what users get.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from contract.evidence import CITED_REF, EvidenceStats, Item, compute_evidence, unfaithful_citations
from trainer.data import Catalogue, UserSplit, sample_negatives, selection_users
from trainer.losses import hit_rate_at_k, ndcg_single_positive, reciprocal_rank
from trainer.progress import Progress
from trainer.teacher import EvidenceModel

Split = Literal["test", "selection"]
RECENT = 3  # the classic co-occurrence baseline counts the last 3 items


@dataclass(frozen=True)
class EvalCase:
    user_id: str
    history: list[str]
    candidates: list[str]  # the target first; shuffled only in what the model sees
    target: str


@dataclass
class TrainingStats:
    """Unpruned counts from training prefixes only (never a validation or test target): the baselines' data."""

    popularity: Counter = field(default_factory=Counter)
    follows: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    @classmethod
    def from_splits(cls, splits: Iterable[UserSplit], window: int = 3) -> TrainingStats:
        stats = cls()
        for split in splits:
            sequence = split.train
            stats.popularity.update(sequence)
            for i, item in enumerate(sequence):
                for previous in sequence[max(0, i - window) : i]:
                    stats.follows[previous][item] += 1
        return stats


def read_retriever_lists(path: Path) -> dict[str, list[str]]:
    """``user_id<TAB>id id id ...`` (the data's .random/.bm25/.pop/.bpr/.sasrec files)."""
    lists = {}
    with path.open() as handle:
        for lineno, line in enumerate(handle, start=1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 2:
                raise ValueError(f"{path}:{lineno}: expected user_id<TAB>item ids")
            lists[cols[0]] = cols[1].split()
    return lists


def build_cases(
    splits: Sequence[UserSplit],
    catalogue: Catalogue,
    users: int,
    negatives: int,
    seed: int,
    retriever: dict[str, list[str]] | None = None,
    split: Split = "test",
) -> list[EvalCase]:
    """``users`` cases of 1 positive + ``negatives`` negatives: test positions of sampled users, or the
    validation positions of the selection users (``split="selection"``)."""
    rng = random.Random(seed)
    if split == "selection":
        pool = [s for s in selection_users(splits) if retriever is None or s.user_id in retriever]
    else:
        pool = [s for s in splits if retriever is None or s.user_id in retriever]
    items = sorted(catalogue.titles)
    cases = []
    for user in rng.sample(pool, min(users, len(pool))):
        history, target = (user.valid_history, user.valid_target) if split == "selection" else (
            user.test_history, user.test_target)  # fmt: skip
        exclude = {*user.train, user.valid_target, user.test_target}
        if retriever is not None:
            negs = [i for i in retriever[user.user_id] if i not in exclude][:negatives]
            if len(negs) < negatives:
                continue
        else:
            negs = sample_negatives(rng, items, exclude, negatives)
        cases.append(EvalCase(user.user_id, history, [target, *negs], target))
    return cases


def positive_rank(scores: Sequence[float], candidates: Sequence[str], target: str) -> int:
    """0-based rank of the target; ties count against it (an order that cannot separate is no help)."""
    s_target = scores[candidates.index(target)]
    return sum(1 for item, s in zip(candidates, scores, strict=True) if item != target and s >= s_target)


def metrics_with_ci(ranks: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    r = torch.tensor(ranks)
    per_user = {
        "ndcg@10": ndcg_single_positive(r, 10),
        "hr@5": hit_rate_at_k(r, 5),
        "hr@10": hit_rate_at_k(r, 10),
        "mrr": reciprocal_rank(r),
    }
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(ranks), (resamples, len(ranks)), generator=generator)
    out = {}
    for name, values in per_user.items():
        boot = values[index].mean(-1)
        out[name] = {
            "mean": values.mean().item(),
            "ci_low": torch.quantile(boot, 0.025).item(),
            "ci_high": torch.quantile(boot, 0.975).item(),
        }
    return out


def paired_difference(ranks_a: Sequence[int], ranks_b: Sequence[int], resamples: int = 1000, seed: int = 0) -> dict:
    """NDCG@10 of A minus B on the SAME users, with a paired bootstrap 95% CI: tighter than comparing two
    marginal CIs, and the right test for "is A better than B" on one test set."""
    diff = ndcg_single_positive(torch.tensor(ranks_a), 10) - ndcg_single_positive(torch.tensor(ranks_b), 10)
    generator = torch.Generator().manual_seed(seed)
    boot = diff[torch.randint(len(diff), (resamples, len(diff)), generator=generator)].mean(-1)
    return {"mean": diff.mean().item(), "ci_low": torch.quantile(boot, 0.025).item(),
            "ci_high": torch.quantile(boot, 0.975).item()}  # fmt: skip


# --- rankers -------------------------------------------------------------------------------------------------
Scorer = Callable[[EvalCase], list[float]]


def random_scorer(seed: int) -> Scorer:
    rng = random.Random(seed)
    return lambda case: [rng.random() for _ in case.candidates]


def count_scorer(counts: Mapping[str, int]) -> Scorer:
    """Each candidate scored by its interaction count (0 if never seen): the popularity baselines' rule."""
    return lambda case: [float(counts.get(i, 0)) for i in case.candidates]


def popularity_scorer(stats: TrainingStats) -> Scorer:
    return count_scorer(stats.popularity)


PRETEST_POPULARITY = "popularity (all pre-test)"


def pretest_popularity_scorer(splits: Sequence[UserSplit]) -> Scorer:
    """Popularity over every interaction before each user's test item (training + validation items).

    The stronger baseline a production system would have at test time; the models learn their counts from
    training prefixes only (plus the validation items RL ranks), so ``popularity`` is the like-for-like one
    and this one the bar to clear. Test targets are never counted."""
    return count_scorer(Counter(item for split in splits for item in split.test_history))


def cooccurrence_scorer(stats: TrainingStats, recent_items: int = RECENT) -> Scorer:
    """Times each candidate followed one of the user's last ``recent_items`` items, popularity as the tie-breaker."""
    top = max(stats.popularity.values(), default=1)

    def score(case: EvalCase) -> list[float]:
        recent = case.history[-recent_items:]
        return [
            sum(stats.follows.get(h, {}).get(i, 0) for h in recent) + stats.popularity.get(i, 0) / (top + 1)
            for i in case.candidates
        ]

    return score


def evidence_scorer(stats: EvidenceStats, model: EvidenceModel, catalogue: Catalogue) -> Scorer:
    """The teacher's verdict model alone on the same evidence the ranker reads (a logistic regression on its
    features): what a model adds beyond weighing the evidence linearly."""

    def score(case: EvalCase) -> list[float]:
        history = [Item(i, catalogue.title(i)) for i in case.history]
        return [model.logit(compute_evidence(history, Item(c, catalogue.title(c)), stats)) for c in case.candidates]

    return score


@dataclass
class Faithfulness:
    """How many rationales cite only what their prompt states (``contract.evidence.unfaithful_citations``): the
    model's own rate (the service withholds every rationale that does not, and scores that item from its
    evidence alone), and a check that every rationale served is faithful."""

    rationales: int = 0  # generated
    withheld: int = 0  # generated but unfaithful: not served
    faithful: int = 0  # served and faithful (should be every served one)
    citing_an_item: int = 0  # served rationales that name a history item (#k)
    citing_a_true_item: int = 0  # ... all of whose named items are ones the evidence links to
    examples: list[dict] = field(default_factory=list)  # a few unfaithful served ones, to read (should be none)

    def count(self, rationale: str | None, evidence_text: str, title: str) -> None:
        self.rationales += 1
        if rationale is None:
            self.withheld += 1
            return
        problems = unfaithful_citations(rationale, evidence_text)
        self.faithful += not problems
        if CITED_REF.search(rationale):
            self.citing_an_item += 1
            self.citing_a_true_item += not any(p.startswith("#") for p in problems)
        if problems and len(self.examples) < 5:
            self.examples.append({"candidate": title, "rationale": rationale, "evidence": evidence_text,
                                  "unstated": problems})  # fmt: skip

    def summary(self) -> dict:
        served = self.rationales - self.withheld
        return {"rationales": self.rationales, "model_faithful_share": 1 - self.withheld / max(1, self.rationales),
                "withheld": self.withheld, "served_faithful_share": self.faithful / max(1, served),
                "citing_an_item": self.citing_an_item,
                "true_item_share": self.citing_a_true_item / max(1, self.citing_an_item),
                "unfaithful_examples": self.examples}  # fmt: skip


async def model_ranks(
    model_dir: Path,
    catalogue: Catalogue,
    cases: Sequence[EvalCase],
    reasoning: str,
    concurrency: int = 16,
    faithfulness: Faithfulness | None = None,
) -> list[int]:
    """Rank every case with the service's Ranker on an in-process vLLM engine (no Redis, no cache): the
    serving path itself, so offline numbers are what users get. With ``faithfulness`` (full mode), every
    rationale is checked against its evidence."""
    from contract.checkpoint import open_checkpoint
    from service.config import Settings
    from service.engine.factory import build_engine
    from service.metrics import Metrics
    from service.protocol import ItemIn, RankRequest
    from service.ranking import Ranker

    settings = Settings(model_path=model_dir, redis_url=None, default_deadline_ms=600_000,
                        max_inflight_items=100_000)  # fmt: skip
    checkpoint = open_checkpoint(model_dir)
    engine = build_engine(settings, checkpoint)
    await engine.start()
    ranker = Ranker(engine, settings, Metrics(), store=None)
    semaphore = asyncio.Semaphore(concurrency)
    shuffler = random.Random(0)
    progress = Progress(f"eval {checkpoint.model_version} ({reasoning})", len(cases),
                        every=max(1, len(cases) // 10), unit="users")  # fmt: skip
    finished = 0

    async def one(index: int, case: EvalCase) -> int:
        nonlocal finished
        shown = list(case.candidates)
        shuffler.shuffle(shown)  # the model never sees the target in a fixed position
        checked = faithfulness is not None and reasoning == "full"
        request = RankRequest(
            history=[ItemIn(item_id=i, title=catalogue.title(i)) for i in case.history],
            candidates=[ItemIn(item_id=i, title=catalogue.title(i)) for i in shown],
            reasoning=reasoning,
            include_rationales=checked,
            include_evidence=checked,
        )
        async with semaphore:
            response = await ranker.rank(request, f"eval-{index}")
        scores = {item.item_id: item.score for item in response.items}
        if checked:
            for item in response.items:
                faithfulness.count(item.rationale, item.evidence.text, catalogue.title(item.item_id))
        finished += 1
        progress.update(finished)
        return positive_rank([scores[i] for i in case.candidates], case.candidates, case.target)

    try:
        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(cases))))
    finally:
        await engine.close()


def write_report(
    results: dict[str, dict],
    out: Path,
    title: str,
    command: str,
    differences: dict[str, dict] | None = None,
    faithfulness: dict[str, dict] | None = None,
) -> None:
    """JSON + a Markdown table + a PNG with CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    differences = differences or {}
    faithfulness = faithfulness or {}
    report = {"title": title, "command": command, "results": results, "paired_differences": differences,
              "faithfulness": faithfulness}  # fmt: skip
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    lines = [f"# {title}", "", f"`{command}`", "", "| ranker | NDCG@10 (95% CI) | HR@5 | HR@10 | MRR |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, m in results.items():
        ndcg = m["ndcg@10"]
        lines.append(f"| {name} | {ndcg['mean']:.3f} [{ndcg['ci_low']:.3f}, {ndcg['ci_high']:.3f}] "
                     f"| {m['hr@5']['mean']:.3f} | {m['hr@10']['mean']:.3f} | {m['mrr']['mean']:.3f} |")  # fmt: skip
    if differences:
        lines += ["", "Paired differences in NDCG@10 on the same users (95% paired-bootstrap CI):", "",
                  "| comparison | difference (95% CI) |", "|---|---|"]  # fmt: skip
        for name, d in differences.items():
            lines.append(f"| {name} | {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |")
    if faithfulness:
        lines += ["", "Rationales that cite only what their prompt's evidence states (every #k and every number). The "
                  "service withholds the others and scores that item from its evidence alone:", "",
                  "| model | rationales | the model's faithful | withheld | served faithful | served citing a history "
                  "item | of those, only items the evidence links |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, f in faithfulness.items():
            model = f"{f['rationales']} | {f['model_faithful_share']:.1%} | {f['withheld']}"
            served = f"{f['served_faithful_share']:.1%} | {f['citing_an_item']} | {f['true_item_share']:.1%}"
            lines.append(f"| {name} | {model} | {served} |")
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    names = list(results)
    means = [results[n]["ndcg@10"]["mean"] for n in names]
    errors = [[m - results[n]["ndcg@10"]["ci_low"] for n, m in zip(names, means, strict=True)],
              [results[n]["ndcg@10"]["ci_high"] - m for n, m in zip(names, means, strict=True)]]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, means, yerr=errors, capsize=4, color="tab:blue")
    ax.set_ylabel("NDCG@10 (95% CI)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out / "eval.png", dpi=110)
    plt.close(fig)
