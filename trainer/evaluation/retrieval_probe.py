"""What the teachers are worth where reranking a retriever's list is real.

    python -m trainer.evaluation.retrieval_probe --run runs/ret [--model runs/ret/sft/model] [--users 5000]

SASRec-hard cases put each user's next item among the 19 items a SASRec ranks highest other than it, so in most
cases the next item is the one candidate the SASRec did not pick. On the cases where the SASRec did rank it in its
top 20 (a retriever's list that found the item: what reranking a retriever's output is), this compares the
teacher's logistics of the evidence: the catalogue one and the one for retrieved candidates, fitted on hits as
SFT's ``--retrieval-share`` fits it (the positive inside the examples' SASRec's top 50, negatives from the same
top 50), each against SASRec's own order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contract.checkpoint import open_checkpoint
from trainer.data import DEFAULT_DATA, load_splits, selection_users
from trainer.evaluation.baselines import case_evidence
from trainer.evaluation.cases import SequenceModelLists, build_cases
from trainer.evaluation.metrics import metrics_with_ci, paired_difference, positive_rank
from trainer.seqrec import SequenceModel
from trainer.teacher import EvidenceModel, Retrieval, calibration_examples, recorded_verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="A make train run (init, seqrec-sft, seqrec-valid).")
    parser.add_argument("--model", type=Path, help="An SFT model trained with --retrieval-share (its two teachers).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--users", type=int, default=5000, help="Hit users the retrieved-candidates logistic is fitted on."
    )
    args = parser.parse_args()
    catalogue, splits = load_splits(args.data)
    base = open_checkpoint(args.run / "init")
    examples_model = SequenceModel.load(args.run / "seqrec-sft").ranker()
    valid_model = SequenceModel.load(args.run / "seqrec-valid").ranker()
    held = {u.user_id for u in selection_users(splits)}
    hits = calibration_examples(splits, catalogue, base.stats, args.users, exclude=held, sequence=examples_model,
                                retrieval=Retrieval(examples_model, 50))  # fmt: skip
    hits_model = EvidenceModel.fit(*hits)
    teachers = {"retrieved-candidates logistic (hits)": hits_model}
    if args.model is not None:
        provenance = json.loads((args.model / "manifest.json").read_text())["provenance"]
        teachers["catalogue logistic"] = recorded_verdicts(provenance)
        teachers["retrieved-candidates logistic (the model's SFT teacher)"] = recorded_verdicts(provenance, "retrieval")
    stats = open_checkpoint(args.run / "sft" / "model").stats
    cases = build_cases(splits, catalogue, 1000, 19, 0, SequenceModelLists(valid_model, splits, "selection", 19),
                        "selection")  # fmt: skip
    ranks: dict[str, list[int]] = {name: [] for name in ["SASRec", *teachers]}
    for case in cases:
        evidence = case_evidence(case, catalogue, stats, valid_model)
        ranks["SASRec"].append(positive_rank(valid_model.scores(case.history, case.candidates), case.candidates,
                                             case.target))  # fmt: skip
        for name, model in teachers.items():
            ranks[name].append(positive_rank([model.logit(e) for e in evidence], case.candidates, case.target))
    on = [i for i, rank in enumerate(ranks["SASRec"]) if rank < len(cases[0].candidates) - 1]
    print(f"{sum(hits[1])} hit users fitted the hits logistic; {len(on)} of {len(cases)} cases are hits")
    on_hits = {name: [r[i] for i in on] for name, r in ranks.items()}
    for name, r in on_hits.items():
        print(name, json.dumps(metrics_with_ci(r)["ndcg@10"]))
        if name != "SASRec":
            print(f"  − SASRec {json.dumps(paired_difference(r, on_hits['SASRec']))}")
    if "catalogue logistic" in on_hits:
        print("hits − catalogue", json.dumps(paired_difference(on_hits["retrieved-candidates logistic (hits)"],
                                                               on_hits["catalogue logistic"])))  # fmt: skip


if __name__ == "__main__":
    main()
