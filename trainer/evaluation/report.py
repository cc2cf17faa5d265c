"""A report: ``eval.json`` (every figure), ``eval.md`` (the tables) and ``eval.png`` (NDCG@10 with CIs)."""

from __future__ import annotations

import json
from pathlib import Path

from contract.evidence import UNSTATED_KINDS


def write_report(
    results: dict[str, dict],
    out: Path,
    title: str,
    command: str,
    differences: dict[str, dict] | None = None,
    faithfulness: dict[str, dict] | None = None,
    details: dict | None = None,
) -> dict:
    """JSON + a Markdown table + a PNG with CI error bars; ``details`` (what made a row, e.g. the sequence
    model's recipe) goes in the JSON only. Returns the JSON's content."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    differences = differences or {}
    faithfulness = faithfulness or {}
    report = {"title": title, "command": command, "results": results, "paired_differences": differences,
              "faithfulness": faithfulness, **(details or {})}  # fmt: skip
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
        lines += unstated_table(faithfulness)
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
    return report


def unstated_table(faithfulness: dict[str, dict]) -> list[str]:
    """Markdown lines: per model, how many withheld rationales cited each kind of claim that their evidence does
    not state (a rationale once per kind); none where no model's report counted them."""
    counted = {name: f["withheld_by_claim"] for name, f in faithfulness.items() if "withheld_by_claim" in f}
    kinds = [kind for kind in UNSTATED_KINDS if any(kind in by_claim for by_claim in counted.values())]
    if not kinds:
        return []
    header = f"| model | withheld | {' | '.join(kinds)} |"
    lines = ["", "What the withheld rationales cited that their evidence does not state (a rationale once per kind):",
             "", header, "|---|---|" + "---|" * len(kinds)]  # fmt: skip
    for name, by_claim in counted.items():
        lines.append(f"| {name} | {faithfulness[name]['withheld']} | "
                     + " | ".join(str(by_claim.get(kind, 0)) for kind in kinds) + " |")  # fmt: skip
    return lines
