"""How far a fusion of the evidence, alone or with signals beyond it, gets above the teacher's logistic.

    python -m trainer.evaluation.fusion --run runs/default [--data DIR] [--users 1000]
        [--signals sasrec,copurchase,ease,title-overlap,recency,title-words,title] [--ease-l2 200] [--wider 5000]

The LLM is trained toward its teacher's logistic of the evidence features (``trainer.teacher``) and lands beside
it. Two questions bound what it can gain, and neither needs an LLM trained:

- Would a teacher that weighed the same features nonlinearly rank better? Without ``--signals`` this fits a
  two-hidden-layer MLP beside the logistic.
- Would a signal the evidence lacks rank better? ``--signals`` fits a logistic of the evidence features plus each
  signal of ``trainer.evaluation.signals`` (and of all of them), before any signal becomes an evidence field.

Every model is fitted on the teacher's calibration examples (the same users, positions and ``sft``-horizon
sequence model SFT's teacher uses) and scored on the selection users' validation positions with the
``valid``-horizon sequence model, as ``eval --split selection`` scores the evidence-model row: NDCG@10 of each and
its paired difference to the logistic. ``--wider N`` scores N other users' validation positions too (no model
here saw one), for narrower CIs. It runs in minutes once ``make seqrec-ranker`` has made RUN's two sequence
models (``title`` also reads RUN/init, the pre-trained LM).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from contract.evidence import Evidence
from contract.sequence import SequenceRanker
from trainer.config import EvidenceConfig, SFTConfig, TeacherConfig
from trainer.data import DEFAULT_DATA, Catalogue, UserSplit, load_splits, selection_users
from trainer.evaluation.baselines import case_evidence
from trainer.evaluation.cases import EvalCase, build_cases
from trainer.evaluation.metrics import metrics_with_ci, paired_difference, positive_rank
from trainer.evaluation.signals import (
    EASE,
    CoPurchase,
    ItemRecency,
    SequenceConfidence,
    Signal,
    TitleLikelihood,
    TitleOverlap,
)
from trainer.seqrec import ranker_sequence_models
from trainer.sft import sft_users
from trainer.statistics import build_stats
from trainer.teacher import calibration_pairs, evidence_features, fit_logistic, pair_evidence
from trainer.title_overlap import TitleWordPrior

EvidenceScorer = Callable[[Sequence[Evidence]], list[float]]
"""A logit for each pair's evidence, in order."""


def fit_mlp(evidence: Sequence[Evidence], labels: Sequence[bool], hidden: int = 32, epochs: int = 60,
            weight_decay: float = 1e-4, seed: int = 0) -> EvidenceScorer:  # fmt: skip
    """A two-hidden-layer MLP on standardised ``evidence_features`` (binary cross-entropy, AdamW): the logit."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.tensor([evidence_features(e) for e in evidence])
    y = torch.tensor([float(v) for v in labels])
    mean, std = x.mean(0), x.std(0) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))  # fmt: skip
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=weight_decay)
    standardised = (x - mean) / std
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(1024):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(standardised[batch]).squeeze(-1), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()

    def score(batch: Sequence[Evidence]) -> list[float]:
        features = torch.tensor([evidence_features(e) for e in batch])
        with torch.no_grad():
            return net((features - mean) / std).squeeze(-1).tolist()

    return score


def validation_cases(splits: Sequence[UserSplit], catalogue: Catalogue, users: int, seed: int = 7) -> list[EvalCase]:
    """The validation positions of ``users`` other users than the selection users, 1 + 19 random negatives: a wider
    sample for a probe that trains no LLM (nothing here saw a validation position), so its CIs are narrower."""
    chosen = {s.user_id for s in selection_users(splits)}
    pool = [s for s in sorted(splits, key=lambda s: s.user_id) if s.user_id not in chosen]
    return build_cases(splits, catalogue, users, 19, seed, split="selection", users_from=pool)


def signal_rows(signals: Sequence[Signal], counted: Sequence[str], history: Sequence[str],
                candidates: Sequence[str]) -> list[list[float]]:  # fmt: skip
    """Every signal's numbers for each candidate of one history, side by side."""
    rows: list[list[float]] = [[] for _ in candidates]
    for signal in signals:
        for row, values in zip(rows, signal(counted, history, candidates), strict=True):
            row += values
    return rows


def report(title: str, ranks: dict[str, list[int]]) -> None:
    print(f"{title}")
    baseline, *others = ranks
    for name, found in ranks.items():
        ndcg = metrics_with_ci(found)["ndcg@10"]
        print(f"  {name:>40}: NDCG@10 {ndcg['mean']:.4f} [{ndcg['ci_low']:.4f}, {ndcg['ci_high']:.4f}]")
    for name in others:
        diff = paired_difference(ranks[name], ranks[baseline])
        print(f"  {name} − logistic, paired: {diff['mean']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run directory with seqrec-sft and seqrec-valid")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset directory")
    parser.add_argument("--users", type=int, default=1000, help="selection users scored")
    parser.add_argument("--calibration-users", type=int, default=TeacherConfig.calibration_users)
    parser.add_argument("--signals", default="", help="comma-separated signals beside the evidence: sasrec, "
                        "copurchase (or one of its numbers: copurchase-cosine-sum, copurchase-cosine-max), ease, "
                        "title-overlap, recency, title-words, title "
                        "(title reads RUN/init, the pre-trained LM)")  # fmt: skip
    parser.add_argument("--ease-l2", type=float, default=EASE.DEFAULT_L2, help="EASE's L2 weight (--signals ease)")
    parser.add_argument("--wider", type=int, default=0, help="also score this many other users' validation positions")
    parser.add_argument("--window", type=int, default=EvidenceConfig.window, help="the links' window (statistics)")
    parser.add_argument("--co-bought", action="store_true", help="the evidence states co-purchases (format v5)")
    parser.add_argument("--ranks-out", type=Path, help="write every model's positive ranks here (JSON), to pair runs")
    args = parser.parse_args()

    catalogue, splits = load_splits(args.data)
    stats = build_stats(catalogue, splits, EvidenceConfig(window=args.window, co_bought=args.co_bought))
    sequences = ranker_sequence_models(args.run / "seqrec-valid", args.run / "seqrec-sft", SFTConfig.targets_per_user)
    shipped = SequenceRanker.load(sequences.shipped)
    names = [name for name in args.signals.split(",") if name]
    training = [s.train for s in splits]
    shared = {"copurchase": lambda: CoPurchase(training),
              "copurchase-cosine-sum": lambda: CoPurchase(training, ["co-purchase cosine sum"]),
              "copurchase-cosine-max": lambda: CoPurchase(training, ["co-purchase cosine max"]),
              "ease": lambda: EASE(training, args.ease_l2),
              "title-overlap": lambda: TitleOverlap(catalogue),
              "recency": lambda: ItemRecency(training),
              "title-words": lambda: TitleWordPrior(training, catalogue.titles),
              "title": lambda: TitleLikelihood(args.run / "init", catalogue)}  # fmt: skip
    if unknown := set(names) - {"sasrec", *shared}:
        parser.error(f"--signals: unknown {sorted(unknown)} ({', '.join(['sasrec', *shared])})")
    built = {name: shared[name]() for name in names if name in shared}
    calibration_signals = {n: built.get(n) or SequenceConfidence(sequences.examples) for n in names}
    serving_signals = {n: built.get(n) or SequenceConfidence(shipped) for n in names}

    sft_chosen = {u.user_id for u in sft_users(splits, SFTConfig(), reserve=args.calibration_users)}
    pairs = calibration_pairs(splits, catalogue, args.calibration_users, exclude=sft_chosen)
    evidence, labels = pair_evidence(pairs, catalogue, stats, sequences.examples), [pair.label for pair in pairs]
    extra: list[list[float]] = []
    for _, group in itertools.groupby(pairs, key=lambda pair: pair.split.user_id):
        group = list(group)
        extra += signal_rows(list(calibration_signals.values()), group[0].split.train, group[0].history,
                             [pair.candidate for pair in group])  # fmt: skip
    features = [evidence_features(e) + x for e, x in zip(evidence, extra, strict=True)]
    feature_sets = {"logistic (the teacher's)": [], **{f"+ {n}": [n] for n in names}}
    if len(names) > 1:
        feature_sets["+ " + " + ".join(names)] = names
    width = len(evidence_features(evidence[0]))
    offsets, at = {}, width
    for name in names:
        offsets[name] = list(range(at, at + len(calibration_signals[name].names)))
        at += len(calibration_signals[name].names)
    columns = {
        label: list(range(width)) + [c for n in used for c in offsets[n]] for label, used in feature_sets.items()
    }
    models = {label: fit_logistic([[row[c] for c in cols] for row in features], labels)
              for label, cols in columns.items()}  # fmt: skip
    for label, (weights, _) in models.items():
        print(f"{label}: extra weights {[round(w, 3) for w in weights[width:]]}")
    print(f"{len(evidence)} calibration rows")

    samples = {"selection users, 1 + 19 random": build_cases(splits, catalogue, args.users, 19, 0, None, "selection")}
    if args.wider:
        samples[f"{args.wider} other users' validation positions, 1 + 19 random"] = validation_cases(
            splits, catalogue, args.wider)  # fmt: skip
    mlp = fit_mlp(evidence, labels) if not names else None  # the evidence's nonlinear fusion, when it is alone
    users = {s.user_id: s for s in splits}
    written: dict[str, dict[str, list[int]]] = {}
    for title, cases in samples.items():
        ranks: dict[str, list[int]] = {label: [] for label in models}
        if mlp is not None:
            ranks["MLP, 2x32"] = []
        for case in cases:
            stated = case_evidence(case, catalogue, stats, shipped)
            more = signal_rows(list(serving_signals.values()), users[case.user_id].train, case.history, case.candidates)
            rows = [evidence_features(e) + m for e, m in zip(stated, more, strict=True)]
            for label, (weights, bias) in models.items():
                scores = [bias + sum(w * row[c] for w, c in zip(weights, columns[label], strict=True)) for row in rows]
                ranks[label].append(positive_rank(scores, case.candidates, case.target))
            if mlp is not None:
                ranks["MLP, 2x32"].append(positive_rank(mlp(stated), case.candidates, case.target))
        report(f"{len(cases)} {title}", ranks)
        written[title] = ranks
    if args.ranks_out is not None:
        args.ranks_out.write_text(json.dumps(written))


if __name__ == "__main__":
    main()
