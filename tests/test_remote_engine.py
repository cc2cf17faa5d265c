"""The remote backend: a real `vllm serve` on the shipped model, reached over HTTP by a second service."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from loadtest.procs import DEFAULT_MODEL, ServerProcess, free_port, start_service, start_vllm_server
from tests.faults import statuses_under_fault

pytestmark = pytest.mark.engine


# The shipped tokenizer has no chat template; this one lets the same server answer /v1/chat/completions too.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def vllm_server(log_dir) -> Iterator[ServerProcess]:
    server = start_vllm_server(log_dir, DEFAULT_MODEL, None, "--chat-template", CHAT_TEMPLATE)
    try:
        server.wait_ready("/health")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remote_service(log_dir, vllm_server) -> Iterator[ServerProcess]:
    service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": vllm_server.url})
    try:
        service.wait_ready("/readyz")
        yield service
    finally:
        service.stop()


def _rank(url: str, body: dict) -> dict:
    response = httpx.post(f"{url}/rank", json=body, timeout=300.0)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("reasoning", ["full", "none"])
def test_remote_ranks_like_in_process(service, remote_service, demo, reasoning):
    """Same checkpoint, same contract, same ids: the remote engine gives the in-process ranking."""
    body = demo.rank_request(demo.users[7], reasoning=reasoning, include_rationales=reasoning == "full")
    local = _rank(service.url, body)
    remote = _rank(remote_service.url, body)
    assert [i["item_id"] for i in remote["items"]] == [i["item_id"] for i in local["items"]]
    for a, b in zip(local["items"], remote["items"], strict=True):
        assert b["score"] == pytest.approx(a["score"], abs=1e-3)
        assert b.get("rationale") == a.get("rationale")
    assert remote["model_version"] == local["model_version"]
    ready = httpx.get(f"{remote_service.url}/readyz").json()
    assert ready["engine"]["backend"] == "vllm-remote"


def test_an_engine_serving_other_weights_is_refused_not_labelled(log_dir, vllm_server, demo, tmp_path):
    """The API's checkpoint is another version than the one the engine serves (a mis-copied volume, a half-done
    roll-out): the API is not ready and /rank answers 503, naming neither host; no score is labelled with the
    API's version."""
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(DEFAULT_MODEL, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "model_version": "rl-other-weights"}))
    service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": vllm_server.url,
                                          "R2RANK_MODEL_PATH": str(other)})  # fmt: skip
    try:
        service.wait_ready("/healthz", timeout=120)
        ready = httpx.get(f"{service.url}/readyz")
        assert ready.status_code == 503 and "rl-other-weights" in ready.json()["engine"]["detail"], ready.text
        response = httpx.post(f"{service.url}/rank", json=demo.rank_request(demo.users[0], n_candidates=2))
        assert response.status_code == 503 and response.json()["error"]["type"] == "engine_unavailable"
    finally:
        service.stop()


def test_unreachable_remote_engine_gives_503_not_500(log_dir, demo):
    """Nothing listens at the engine URL: the API still starts, is not ready, and /rank answers 503."""
    dead_url = f"http://127.0.0.1:{free_port()}"
    service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": dead_url})
    try:
        service.wait_ready("/healthz", timeout=120)
        ready = httpx.get(f"{service.url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "unreachable" in ready.json()["engine"]["detail"]
        response = httpx.post(f"{service.url}/rank", json=demo.rank_request(demo.users[0], n_candidates=2))
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "engine_unavailable"
        assert response.headers.get("retry-after")
        host = dead_url.removeprefix("http://")
        assert host not in ready.text and host not in response.text  # internal hosts only in the logs
    finally:
        service.stop()


def test_killed_remote_engine_gives_503_then_recovers(log_dir, demo):
    """Kill `vllm serve` mid-load: requests get 503 (never 500), /readyz turns false; start it again on the
    same port: the service reconnects by itself and is ready again."""
    import signal
    import time

    vllm_server = start_vllm_server(log_dir)
    vllm_server.wait_ready("/health")
    port = int(vllm_server.url.rsplit(":", 1)[1])
    service = start_service(log_dir, env={"R2RANK_ENGINE": "remote", "R2RANK_ENGINE_URL": vllm_server.url,
                                          "R2RANK_ENGINE_TIMEOUT_S": "10"})  # fmt: skip
    try:
        service.wait_ready("/readyz")
        body = demo.rank_request(demo.users[8], n_candidates=5, reasoning="full")

        statuses = statuses_under_fault(service.url, [body] * 4, 8.0, 2.0, lambda: vllm_server.stop(signal.SIGKILL))
        assert 200 in statuses and 503 in statuses, statuses
        assert set(statuses) <= {200, 503}, statuses
        deadline = time.monotonic() + 30
        while httpx.get(f"{service.url}/readyz").status_code == 200:
            assert time.monotonic() < deadline, "readyz stayed true with the engine dead"
            time.sleep(0.5)

        restarted = start_vllm_server(log_dir, port=port)
        try:
            restarted.wait_ready("/health")
            service.wait_ready("/readyz", timeout=120)
            assert httpx.post(f"{service.url}/rank", json=body, timeout=60).status_code == 200
        finally:
            restarted.stop()
    finally:
        service.stop()
        vllm_server.stop()


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_llm_teacher_asks_a_real_server_concurrently_and_caches(vllm_server, demo, tmp_path, api, caplog):
    from contract.checkpoint import open_checkpoint
    from contract.evidence import Item
    from trainer.data import Catalogue
    from trainer.teacher import TeacherInput
    from trainer.teacher_llm import LLMTeacher

    catalogue = Catalogue(dict(demo.titles))
    assembler = open_checkpoint(DEFAULT_MODEL).prompts
    pairs = []  # as the ranker's prompt shows them: numbered history, the candidate, its evidence
    for user in demo.users[:8]:
        prompts = assembler.prompts([Item(i, demo.titles[i]) for i in user.history],
                                    [Item(i, demo.titles[i]) for i in user.candidates[:3]], "full")  # fmt: skip
        shown = zip(prompts.candidates, prompts.evidence, strict=True)
        pairs += [TeacherInput(prompts.history, candidate, evidence) for candidate, evidence in shown]
    cache = tmp_path / "teacher.jsonl"
    teacher = LLMTeacher(catalogue, vllm_server.url, str(DEFAULT_MODEL), cache, api=api, concurrency=8)
    with caplog.at_level("INFO", logger="trainer.progress"):
        first = teacher.rationales(pairs)
    assert teacher.requests_sent == len(pairs) == len(cache.read_text().splitlines())
    assert f"teacher {len(pairs)}/{len(pairs)} rationales" in caplog.text and "ETA" in caplog.text  # progress shown
    assert all("\n" not in r for r in first) and any(first), first[:3]  # single-line, not all empty

    dead = f"http://127.0.0.1:{free_port()}"  # a rerun needs no server at all: everything is cached
    again = LLMTeacher(catalogue, dead, str(DEFAULT_MODEL), cache, api=api)
    assert again.rationales(pairs) == first and again.requests_sent == 0


def test_sft_with_a_teacher_url_trains_on_its_rationales(vllm_server, tiny_data, tmp_path):
    import json
    import subprocess
    import sys

    from contract.checkpoint import open_checkpoint
    from loadtest.procs import REPO_ROOT

    tiny = ["--vocab-size", "1024", "--hidden-size", "64", "--intermediate-size", "128", "--layers", "2",
            "--heads", "2", "--kv-heads", "1", "--pretrain-epochs", "0"]  # fmt: skip
    run = [sys.executable, "-m", "trainer.cli"]
    init = subprocess.run([*run, "init-model", "--out", str(tmp_path / "init"), "--data", str(tiny_data), *tiny],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert init.returncode == 0, init.stderr[-2000:]
    sft = subprocess.run([*run, "sft", "--base", str(tmp_path / "init"), "--out", str(tmp_path / "sft"), "--data",
                          str(tiny_data), "--users", "10", "--steps", "3", "--batch-size", "2", "--teacher-url",
                          vllm_server.url, "--teacher-model", str(DEFAULT_MODEL), "--teacher-api", "completions"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-2000:]
    cached = [json.loads(line) for line in (tmp_path / "sft" / "teacher_cache.jsonl").read_text().splitlines()]
    assert cached and len(cached) % 4 == 0  # per user: 1 positive + 3 negatives, one request each
    provenance = open_checkpoint(tmp_path / "sft" / "model").manifest.provenance
    assert provenance["teacher"] == f"{vllm_server.url} {DEFAULT_MODEL}"
    assert provenance["config"]["answer_distill"] == 0.0  # soft labels come from the built-in teacher only


async def test_batched_calls_score_like_per_item_calls_and_a_rejected_prompt_costs_only_its_item(vllm_server, demo):
    """Two list-valued calls per request give the per-item calls' scores and rationales; a prompt the server
    refuses (longer than its max_model_len) is None alone, in both compositions, and the rest is scored."""
    from contract.checkpoint import open_checkpoint
    from contract.evidence import Item
    from service.engine.base import ScoringJob
    from service.engine.vllm_remote import RemoteVLLMEngine

    checkpoint = open_checkpoint(DEFAULT_MODEL)
    user = demo.users[11]
    prompts = checkpoint.prompts.prompts([Item(i, demo.titles[i]) for i in user.history],
                                         [Item(i, demo.titles[i]) for i in user.candidates[:3]], "full")  # fmt: skip
    jobs = [ScoringJob(prompts.prompt_ids(i), "full", prompts.evidence[i].text(), prompts.evidence_only_ids(i))
            for i in range(3)]  # fmt: skip
    too_long = ScoringJob(jobs[0].prompt_ids * 20, "full", jobs[0].evidence_text, jobs[0].evidence_only_ids)
    assert len(too_long.prompt_ids) > 2048
    results = {}
    for batched in (True, False):
        async with RemoteVLLMEngine(checkpoint, vllm_server.url, batched=batched) as engine:
            results[batched] = await engine.score_items([jobs[0], too_long, jobs[1], jobs[2]], "t", routing_key="k")
    for together, alone in zip(results[True], results[False], strict=True):
        assert (together is None) == (alone is None)
        if together is not None:
            assert together.score == pytest.approx(alone.score, abs=1e-3)
            assert together.rationale == alone.rationale and together.rationale_tokens == alone.rationale_tokens
    assert results[True][1] is None and all(results[True][i] is not None for i in (0, 2, 3))
