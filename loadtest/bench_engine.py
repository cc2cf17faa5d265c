"""Service vs raw engine, side by side on the same 20-candidate Video Games requests.

    python -m loadtest.bench_engine [--users 24] [--concurrency 8] [--modes full,none]

Measures, in one run and on one machine:
  (a) the raw vLLM engine (offline ``LLM.generate``) doing exactly the service's prompts: all rationales
      in one batch, then all answer reads in one batch — the ceiling;
  (b) the service over real HTTP with N concurrent clients (prefix caching on, the default);
  (c) the same service with prefix caching off.
and prints items/s for each plus the ratios (b)/(a) and (b)/(c). Each configuration gets a fresh engine,
a warm-up on other users (compile, allocator) and then the timed users, so no prefix-cache entry from the
warm-up can flatter the timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from contract.checkpoint import open_checkpoint
from loadtest.procs import VLLM_CPU_ENV, start_service
from service.config import Settings
from service.demo import DemoData
from service.engine.vllm_local import kv_block_size, rationale_sampling_params
from service.protocol import RankRequest

WARMUP_USERS = 4
RESULT_TAG = "R2RANK_BENCH_RESULT "  # vLLM logs to stdout too; the child's figure is on the tagged line


def _requests(demo: DemoData, users: int, offset: int, reasoning: str, n_candidates: int) -> list[dict]:
    chosen = demo.users[offset : offset + users]
    return [demo.rank_request(u, n_candidates=n_candidates, reasoning=reasoning) for u in chosen]


# --- (a) the raw engine --------------------------------------------------------------------------------
def run_raw_engine(model: Path, bodies_by_phase: dict[str, list[dict]], reasoning: str) -> float:
    """Offline vLLM on the service's exact token ids; returns items/s of the timed phase."""
    from vllm import LLM, SamplingParams, TokensPrompt

    settings = Settings(model_path=model)
    checkpoint = open_checkpoint(model)
    assembler = checkpoint.prompts
    yes, no = checkpoint.answer_ids
    max_tokens = settings.max_rationale_tokens or checkpoint.manifest.max_rationale_tokens
    llm = LLM(
        str(model), dtype=settings.dtype, max_model_len=settings.max_model_len, enable_prefix_caching=True,
        seed=0, max_num_seqs=settings.max_num_seqs, block_size=kv_block_size(settings.kv_block_size),
        disable_log_stats=True,
    )  # fmt: skip
    newline_ids = set(assembler.stop_ids)
    gen = rationale_sampling_params(max_tokens, sorted(newline_ids))  # the service's own generation parameters
    score = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=[yes, no], detokenize=False)

    def one_pass(bodies: list[dict]) -> int:
        jobs = []
        for body in bodies:
            request = RankRequest.model_validate(body)
            titles = [i.title or "" for i in request.history or []], [i.title or "" for i in request.candidates]
            prompts = assembler.prompts(*titles, request.reasoning)
            jobs += [prompts.prompt_ids(i) for i in range(len(prompts.segments))]
        if reasoning == "full":
            outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in jobs], gen, use_tqdm=False)
            texts = [checkpoint.encoder.decode([t for t in out.outputs[0].token_ids if t not in newline_ids])
                     for out in outs]  # fmt: skip
            rationales = assembler.rationale_ids(texts)
            score_ids = [assembler.score_input(ids, r) for ids, r in zip(jobs, rationales, strict=True)]
        else:
            score_ids = [assembler.score_input(ids) for ids in jobs]
        llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in score_ids], score, use_tqdm=False)
        return len(jobs)

    one_pass(bodies_by_phase["warmup"])
    started = time.perf_counter()
    items = one_pass(bodies_by_phase["timed"])
    return items / (time.perf_counter() - started)


# --- (b), (c) the service --------------------------------------------------------------------------------
async def _drive(url: str, bodies: list[dict], concurrency: int) -> float:
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    items = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal items
        while not queue.empty():
            body = queue.get_nowait()
            response = await http.post("/rank", json=body)
            response.raise_for_status()
            items += len(response.json()["items"])

    async with httpx.AsyncClient(base_url=url, timeout=600.0) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return items / (time.perf_counter() - started)


def run_service(bodies_by_phase: dict[str, list[dict]], concurrency: int, prefix_caching: bool) -> float:
    log_dir = Path(tempfile.mkdtemp(prefix="r2rank-bench-"))
    env = {
        "R2RANK_ENABLE_PREFIX_CACHING": str(prefix_caching).lower(),
        "R2RANK_SCORE_CACHE": "false",  # measure the engine path, not Redis hits
    }
    server = start_service(log_dir, env=env)
    try:
        server.wait_ready("/readyz")
        asyncio.run(_drive(server.url, bodies_by_phase["warmup"], concurrency))
        return asyncio.run(_drive(server.url, bodies_by_phase["timed"], concurrency))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=24, help="timed requests (one user each) per configuration")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients for (b) and (c)")
    parser.add_argument("--modes", default="full,none")
    parser.add_argument("--model", type=Path, default=Settings().model_path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--raw-only", help=argparse.SUPPRESS)  # internal: run (a) in a child process
    args = parser.parse_args()

    demo = DemoData()
    modes = args.modes.split(",")

    def phases(reasoning: str) -> dict[str, list[dict]]:
        return {
            "warmup": _requests(demo, WARMUP_USERS, 0, reasoning, args.candidates),
            "timed": _requests(demo, args.users, 100, reasoning, args.candidates),
        }

    if args.raw_only:
        rate = run_raw_engine(args.model, phases(args.raw_only), args.raw_only)
        print(RESULT_TAG + json.dumps({"items_per_s": rate}), flush=True)
        return

    results = []
    for reasoning in modes:
        child = subprocess.run(
            [sys.executable, "-m", "loadtest.bench_engine", "--raw-only", reasoning, "--users", str(args.users),
             "--candidates", str(args.candidates), "--model", str(args.model)],
            capture_output=True, text=True, env={**os.environ, **VLLM_CPU_ENV}, check=False,
        )  # fmt: skip
        if child.returncode != 0:
            sys.exit(f"raw engine run failed:\n{child.stderr[-3000:]}")
        tagged = [line for line in child.stdout.splitlines() if line.startswith(RESULT_TAG)]
        raw = json.loads(tagged[-1][len(RESULT_TAG) :])["items_per_s"]
        service = run_service(phases(reasoning), args.concurrency, prefix_caching=True)
        no_cache = run_service(phases(reasoning), args.concurrency, prefix_caching=False)
        results.append(
            {"reasoning": reasoning, "raw_engine": raw, "service": service, "service_no_prefix_cache": no_cache}
        )

    print(
        f"\n{args.users} requests x {args.candidates} candidates per configuration, "
        f"{args.concurrency} concurrent HTTP clients, CPUs: {os.cpu_count()}\n"
    )
    header = (
        "| reasoning | (a) raw engine items/s | (b) service items/s | (c) no prefix cache items/s | (b)/(a) | (b)/(c) |"
    )
    print(header)
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['reasoning']} | {r['raw_engine']:.1f} | {r['service']:.1f} | {r['service_no_prefix_cache']:.1f} "
            f"| {r['service'] / r['raw_engine']:.2f} | {r['service'] / r['service_no_prefix_cache']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
