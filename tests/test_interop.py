"""Interop: the official cohere SDK against /v1 and /v2 rerank, and r2rank's own typed clients."""

from __future__ import annotations

import asyncio
import math
import uuid

import cohere
import httpx
import pytest

from contract.catalogue import item_order
from service.client import AsyncR2RankClient, R2RankClient, R2RankError
from service.rerank import relevance_score

pytestmark = pytest.mark.engine

HISTORY = ["Super Mario Odyssey", "The Legend of Zelda: Breath of the Wild"]
DOCUMENTS = ["Mario Kart 8 Deluxe", "Call of Duty: WWII - PlayStation 4", "Splatoon 2", "FIFA 18"]


def _rank_scores(client: httpx.Client, reasoning: str = "full") -> dict[int, float]:
    """The /rank scores rerank's must equal: the documents as items outside the catalogue (new items)."""
    body = {
        "history": [{"item_id": f"query-{i}", "title": t} for i, t in enumerate(HISTORY)],
        "candidates": [{"item_id": f"doc-{i}", "title": t} for i, t in enumerate(DOCUMENTS)],
        "reasoning": reasoning,
    }
    response = client.post("/rank", json=body)
    assert response.status_code == 200, response.text
    return {int(item["item_id"].removeprefix("doc-")): item["score"] for item in response.json()["items"]}


def _check_results(results, expected_scores: dict[int, float], top_n: int) -> None:
    assert len(results) == top_n
    best = sorted(expected_scores, key=lambda i: (-expected_scores[i], str(i)))[:top_n]
    assert [r.index for r in results] == best
    for r in results:
        assert 0.0 < r.relevance_score < 1.0
        assert r.relevance_score == pytest.approx(relevance_score(expected_scores[r.index]), abs=1e-5)


def test_cohere_sdk_v1_client(service, client):
    co = cohere.Client(api_key="not-checked", base_url=service.url, timeout=300)
    response = co.rerank(model="r2rank", query="\n".join(HISTORY), documents=DOCUMENTS, top_n=3, return_documents=True)
    _check_results(response.results, _rank_scores(client), 3)
    for r in response.results:
        assert r.document.text == DOCUMENTS[r.index]
    assert response.meta.api_version.version == "1"


def test_cohere_sdk_v2_client(service, client):
    co = cohere.ClientV2(api_key="not-checked", base_url=service.url, timeout=300)
    response = co.rerank(model="r2rank", query="\n".join(HISTORY), documents=DOCUMENTS, top_n=2)
    _check_results(response.results, _rank_scores(client), 2)
    assert response.meta.api_version.version == "2"


def test_rerank_document_objects_and_user_query(client, demo):
    user = demo.users[50]
    user_id = f"rr-{uuid.uuid4().hex[:6]}"
    assert client.put("/items", json=[demo.item(i) for i in user.history]).status_code == 200
    assert (
        client.put(f"/users/{user_id}/history", json={"items": [{"item_id": i} for i in user.history]}).status_code
        == 200
    )
    docs = [demo.titles[i] for i in user.candidates[:5]]
    rerank = client.post("/v1/rerank", json={"query": f"user:{user_id}", "documents": [{"text": d} for d in docs],
                                             "reasoning": "none"})  # fmt: skip
    assert rerank.status_code == 200, rerank.text
    inline = client.post(
        "/rank",
        json={"history": [demo.item(i) for i in user.history], "reasoning": "none",
              "candidates": [{"item_id": f"doc-{i}", "title": d} for i, d in enumerate(docs)]},
    )  # fmt: skip
    expected = {int(i["item_id"].removeprefix("doc-")): i["score"] for i in inline.json()["items"]}
    got = {r["index"]: r["relevance_score"] for r in rerank.json()["results"]}
    assert got.keys() == expected.keys()
    for index, score in expected.items():
        assert got[index] == pytest.approx(relevance_score(score), abs=1e-5)


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank"])
def test_rerank_scores_do_not_depend_on_where_a_document_stands(client, demo, route):
    """Documents are known by their text alone: the catalogue's item "0" must not lend its statistics to
    whichever document comes first. The same 20 documents in two orders, query as text and as a stored user."""
    user = demo.users[70]
    user_id = f"ro-{uuid.uuid4().hex[:6]}"
    assert client.put("/items", json=[demo.item(i) for i in user.history]).status_code == 200
    stored = client.put(f"/users/{user_id}/history", json={"items": [{"item_id": i} for i in user.history]})
    assert stored.status_code == 200
    documents = [demo.titles[i] for i in item_order(demo.titles)[:20]]  # ids "0", "1"...
    for query in ("\n".join(demo.titles[i] for i in user.history), f"user:{user_id}"):
        scores = []
        for order in (documents, documents[::-1]):
            response = client.post(route, json={"query": query, "documents": order, "reasoning": "none"})
            assert response.status_code == 200, response.text
            scores.append({order[r["index"]]: r["relevance_score"] for r in response.json()["results"]})
        assert scores[0].keys() == scores[1].keys() == set(documents)
        for document, score in scores[0].items():
            assert score == pytest.approx(scores[1][document], abs=1e-6), (query[:20], document)
    client.delete(f"/users/{user_id}/history")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": "x", "documents": []}, "documents"),
        ({"query": "x", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "", "documents": ["a"]}, "query"),
        ({"query": "x", "documents": [{"title": "no text"}]}, "documents.0"),
        ({"query": "x", "documents": ["d"] * 201}, "documents"),
    ],
)
def test_rerank_errors_name_rerank_fields(client, body, param):
    response = client.post("/v2/rerank", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"].startswith(param)


def test_relevance_score_is_sigmoid_of_score():
    assert relevance_score(0.0) == 0.5
    assert relevance_score(math.log(3)) == pytest.approx(0.75)
    assert relevance_score(-800.0) >= 0.0 and relevance_score(800.0) <= 1.0  # no overflow


# --- the typed client ----------------------------------------------------------------------------------------
def test_typed_client_round_trip(service, demo):
    user = demo.users[60]
    user_id = f"tc-{uuid.uuid4().hex[:6]}"
    with R2RankClient(service.url) as r2:
        r2.wait_ready()
        assert r2.put_items([demo.item(i) for i in (*user.history, *user.candidates)]).upserted > 0
        assert [e.item_id for e in r2.put_history(user_id, user.history[:-1]).items] == user.history[:-1]
        assert r2.add_event(user_id, user.history[-1], event_id="e1").stored is True
        assert r2.add_event(user_id, user.history[-1], event_id="e1").stored is False
        assert [e.item_id for e in r2.get_history(user_id).items] == user.history
        ranked = r2.rank(user_id=user_id, candidates=user.candidates, top_k=5, reasoning="none")
        assert len(ranked.items) == 5 and ranked.items[0].rank == 1
        assert r2.get_item(user.candidates[0]).title == demo.titles[user.candidates[0]]
        with pytest.raises(R2RankError) as info:
            r2.get_item("no-such-item")
        assert info.value.status_code == 404 and info.value.param == "item_id"
        with pytest.raises(R2RankError) as info:
            r2.rank(candidates=[])
        assert info.value.status_code == 422 and info.value.param == "candidates"
        r2.delete_history(user_id)
        assert r2.get_history(user_id).items == []

    async def run_async():
        async with AsyncR2RankClient(service.url) as r2:
            return await r2.rank(history=user.history, candidates=user.candidates, reasoning="none")

    async_ranked = asyncio.run(run_async())
    assert {i.item_id for i in async_ranked.items} == set(user.candidates)


def test_client_retries_429_and_503_honouring_retry_after():
    """Unit test of the client's own retry logic (a scripted transport, no server)."""
    calls: list[float] = []
    script = [
        httpx.Response(503, headers={"Retry-After": "0.2"}, json={"error": {"message": "loading"}}),
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}}),
        httpx.Response(200, json={"upserted": 1}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        import time

        calls.append(time.monotonic())
        return script[len(calls) - 1]

    with R2RankClient("http://r2rank.test", transport=httpx.MockTransport(handler)) as r2:
        assert r2.put_items([{"item_id": "1", "title": "A"}]).upserted == 1
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.19  # waited what Retry-After said

    always_busy = httpx.MockTransport(lambda r: httpx.Response(429, headers={"Retry-After": "0"}, json={}))
    with (
        R2RankClient("http://r2rank.test", transport=always_busy, max_retries=2) as r2,
        pytest.raises(R2RankError) as info,
    ):
        r2.get_item("x")
    assert info.value.status_code == 429


def test_openapi_documents_examples_and_errors(client):
    """Every route documents its errors; every request body carries an example; /docs renders."""
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in ("/healthz", "/metrics"):
                continue
            codes = set(operation["responses"])
            assert codes & {"422", "503", "404"}, f"{method.upper()} {path} documents no error"
            body = operation.get("requestBody")
            if body:
                content = body["content"]["application/json"]
                ref = content["schema"].get("$ref", "")
                model = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
                examples = content.get("examples") or content["schema"].get("examples") or model.get("examples")
                assert examples, f"{method.upper()} {path} has no request example"
    rank_example = schema["components"]["schemas"]["RankRequest"]["examples"][0]
    assert client.post("/rank", json=rank_example).status_code == 200  # the /docs example works
    assert "swagger" in client.get("/docs").text.lower()
