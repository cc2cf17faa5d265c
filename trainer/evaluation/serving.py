"""A checkpoint scored through the service's own code: ``Ranker`` over the in-process vLLM engine, evidence
included, so offline numbers are what users get; in full mode every rationale is checked against its evidence.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from contract.evidence import CITED_REF, UNSTATED_KINDS, unfaithful_citations
from trainer.data import Catalogue
from trainer.evaluation.cases import EvalCase
from trainer.evaluation.metrics import positive_rank
from trainer.progress import Progress

if TYPE_CHECKING:
    from contract.checkpoint import Checkpoint


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
    withheld_by_claim: dict[str, int] = field(default_factory=dict)  # what withheld ones cited unstated, by kind

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
                "withheld_by_claim": self.withheld_by_claim, "unfaithful_examples": self.examples}  # fmt: skip


async def model_ranks(
    checkpoint: Checkpoint,
    catalogue: Catalogue,
    cases: Sequence[EvalCase],
    reasoning: str,
    concurrency: int = 16,
    faithfulness: Faithfulness | None = None,
    source: str = "catalogue",
) -> list[int]:
    """Rank every case with the service's Ranker on an in-process vLLM engine (no Redis, no cache): the
    serving path itself, so offline numbers are what users get. With ``faithfulness`` (full mode), every
    rationale is checked against its evidence; ``source`` is the request's ``candidate_source``."""
    from service.config import Settings
    from service.engine.factory import build_engine
    from service.metrics import Metrics
    from service.protocol import ItemIn, RankRequest
    from service.ranking import Ranker

    settings = Settings(model_path=checkpoint.path, redis_url=None, default_deadline_ms=600_000,
                        max_inflight_items=100_000)  # fmt: skip
    engine = build_engine(settings, checkpoint)
    await engine.start()
    metrics = Metrics()
    ranker = Ranker(engine, settings, metrics, store=None)
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
            candidate_source=source,
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
        ranks = list(await asyncio.gather(*(one(i, c) for i, c in enumerate(cases))))
    finally:
        await engine.close()
    if faithfulness is not None:  # the service's own count of what withheld rationales cited unstated
        counts = {kind: metrics.registry.get_sample_value("r2rank_unstated_claims_total", {"claim": kind})
                  for kind in UNSTATED_KINDS}  # fmt: skip
        faithfulness.withheld_by_claim = {kind: int(n) for kind, n in counts.items() if n}
    return ranks
