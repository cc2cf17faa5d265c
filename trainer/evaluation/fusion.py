"""How far a nonlinear fusion of the evidence gets above the teacher's logistic: the evidence's own ceiling.

    python -m trainer.evaluation.fusion --run runs/default [--data DIR] [--users 1000]

The LLM is trained toward its teacher's logistic of the evidence features (``trainer.teacher``); a teacher that
weighed the same features nonlinearly could only help it if such a fusion ranks better. This fits both on the
teacher's calibration examples (the same users, positions and ``sft``-horizon sequence model SFT's teacher uses)
and scores them on the selection users' validation positions with the ``valid``-horizon sequence model, as
``eval --split selection`` scores the evidence-model row: NDCG@10 of each and the paired difference. No LLM is
involved, so it runs in minutes once ``make seqrec-ranker`` has made RUN's two sequence models.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from contract.evidence import Evidence
from contract.sequence import SequenceRanker
from trainer.config import EvidenceConfig, SFTConfig, TeacherConfig
from trainer.data import DEFAULT_DATA, load_splits
from trainer.evaluation.baselines import case_evidence
from trainer.evaluation.cases import build_cases
from trainer.evaluation.metrics import metrics_with_ci, paired_difference, positive_rank
from trainer.seqrec import ranker_sequence_models
from trainer.sft import sft_users
from trainer.statistics import build_stats
from trainer.teacher import EvidenceModel, calibration_examples, evidence_features

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run directory with seqrec-sft and seqrec-valid")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset directory")
    parser.add_argument("--users", type=int, default=1000, help="selection users scored")
    parser.add_argument("--calibration-users", type=int, default=TeacherConfig.calibration_users)
    args = parser.parse_args()

    catalogue, splits = load_splits(args.data)
    stats = build_stats(catalogue, splits, EvidenceConfig())
    sequences = ranker_sequence_models(args.run / "seqrec-valid", args.run / "seqrec-sft", SFTConfig.targets_per_user)
    sft_chosen = {u.user_id for u in sft_users(splits, SFTConfig(), reserve=args.calibration_users)}
    evidence, labels = calibration_examples(splits, catalogue, stats, args.calibration_users,
                                            exclude=sft_chosen, sequence=sequences.examples)  # fmt: skip
    logistic = EvidenceModel.fit(evidence, labels)
    scorers: dict[str, EvidenceScorer] = {
        "logistic (the teacher's)": lambda batch: [logistic.logit(e) for e in batch],
        "MLP, 2x32": fit_mlp(evidence, labels),
    }
    shipped = SequenceRanker.load(sequences.shipped)
    cases = build_cases(splits, catalogue, args.users, 19, 0, None, "selection")
    ranks: dict[str, list[int]] = {name: [] for name in scorers}
    for case in cases:
        batch = case_evidence(case, catalogue, stats, shipped)  # once per case, for every scorer
        for name, score in scorers.items():
            ranks[name].append(positive_rank(score(batch), case.candidates, case.target))
    print(f"{len(evidence)} calibration rows; {len(cases)} selection users, 1 + 19 random")
    baseline, *others = ranks
    for name, found in ranks.items():
        ndcg = metrics_with_ci(found)["ndcg@10"]
        print(f"{name:>26}: NDCG@10 {ndcg['mean']:.4f} [{ndcg['ci_low']:.4f}, {ndcg['ci_high']:.4f}]")
    for name in others:
        diff = paired_difference(ranks[name], ranks[baseline])
        print(f"{name} − logistic, paired: {diff['mean']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]")


if __name__ == "__main__":
    main()
