"""The approach a team would write by hand vs the service: same model, same prompts, same scores.

    python -m loadtest.bench_naive [--users 8] [--concurrency 16]

Naive: a sequential Hugging Face loop — for each item, ``model.generate`` the greedy rationale (stopping at a
newline), then one forward pass over prompt + rationale + answer cue for log P(yes) - log P(no).
Service: /rank over HTTP with N concurrent clients (score cache off). Prints items/s of both and the ratio
(goal: service >= 10x), and checks that both produced the same top item for every request.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from contract.checkpoint import open_checkpoint
from loadtest.procs import DEFAULT_MODEL, start_service
from service.demo import DemoData
from service.protocol import RankRequest
from service.ranking import rank_order


def naive_scores(model_dir: Path, bodies: list[dict]) -> tuple[float, list[list[float]]]:
    import torch
    from transformers import AutoModelForCausalLM

    checkpoint = open_checkpoint(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    encoder, assembler = checkpoint.encoder, checkpoint.prompts
    yes, no = checkpoint.answer_ids
    newline_ids = assembler.stop_ids
    max_new = checkpoint.manifest.max_rationale_tokens
    all_scores, items = [], 0
    started = time.perf_counter()
    with torch.inference_mode():
        for body in bodies:
            request = RankRequest.model_validate(body)
            prompts = assembler.prompts([i.title or "" for i in request.history or []],
                                        [i.title or "" for i in request.candidates], request.reasoning)  # fmt: skip
            scores = []
            for index in range(len(prompts.segments)):
                prompt_ids = prompts.prompt_ids(index)
                ids = torch.tensor([prompt_ids])
                out = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=newline_ids,
                                     pad_token_id=encoder.pad_token_id)  # fmt: skip
                generated = [t for t in out[0, ids.shape[1] :].tolist() if t not in newline_ids]
                rationale = assembler.rationale_ids([encoder.decode(generated)])[0]
                logits = model(torch.tensor([assembler.score_input(prompt_ids, rationale)])).logits[0, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                scores.append(assembler.score(logprobs[yes].item(), logprobs[no].item()))
                items += 1
            all_scores.append(scores)
    return items / (time.perf_counter() - started), all_scores


async def service_scores(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[dict[str, float]]]:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600.0) as http:
        await http.post("/rank", json=bodies[0])  # warm-up

        async def one(body: dict) -> dict[str, float]:
            async with semaphore:
                response = await http.post("/rank", json=body)
                response.raise_for_status()
                return {i["item_id"]: i["score"] for i in response.json()["items"]}

        started = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in bodies))
        items = sum(len(b["candidates"]) for b in bodies)
        return items / (time.perf_counter() - started), list(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8, help="requests of 20 candidates for the naive loop")
    parser.add_argument("--service-users", type=int, default=48, help="requests for the service")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    demo = DemoData()
    bodies = [demo.rank_request(u, reasoning="full") for u in demo.users[:200][-args.service_users :]]
    naive_rate, naive = naive_scores(DEFAULT_MODEL, bodies[: args.users])
    server = start_service(Path(tempfile.mkdtemp(prefix="r2rank-bench-")), env={"R2RANK_SCORE_CACHE": "false"})
    try:
        server.wait_ready("/readyz")
        service_rate, served = asyncio.run(service_scores(server.url, bodies, args.concurrency))
    finally:
        server.stop()

    agree = 0
    for body, naive_row, served_row in zip(bodies, naive, served, strict=False):  # naive ran on the first few
        ids = [c["item_id"] for c in body["candidates"]]
        naive_top = ids[rank_order(ids, naive_row)[0]]
        served_top = ids[rank_order(ids, [served_row[i] for i in ids])[0]]
        agree += naive_top == served_top
    print(f"\nnaive sequential HF loop: {naive_rate:.1f} items/s ({args.users} requests x 20 candidates)")
    print(f"service, {args.concurrency} clients: {service_rate:.1f} items/s ({len(bodies)} requests)")
    print(f"service / naive: {service_rate / naive_rate:.1f}x")
    print(f"same top item in {agree}/{min(len(naive), len(served))} requests")


if __name__ == "__main__":
    main()
