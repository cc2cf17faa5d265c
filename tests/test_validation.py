"""Bad input gets a 4xx whose body names the field, and the service keeps serving afterwards."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.engine

GOOD = {
    "history": [{"item_id": "1", "title": "Super Mario Odyssey"}],
    "candidates": [{"item_id": "2", "title": "Mario Kart 8 Deluxe"}, {"item_id": "3", "title": "Halo 3"}],
    "reasoning": "none",
}


def _with(**changes) -> dict:
    return {**GOOD, **changes}


CASES = [
    ("empty candidates", _with(candidates=[]), "candidates"),
    ("missing candidates", {"history": []}, "candidates"),
    (
        "too many candidates",
        _with(candidates=[{"item_id": str(i), "title": f"T{i}"} for i in range(201)]),
        "candidates",
    ),
    (
        "duplicate ids",
        _with(candidates=[{"item_id": "2", "title": "A"}, {"item_id": "2", "title": "B"}]),
        "candidates",
    ),
    ("empty title", _with(candidates=[{"item_id": "2", "title": "   "}]), "candidates.0.title"),
    ("oversized title", _with(candidates=[{"item_id": "2", "title": "x" * 2001}]), "candidates.0.title"),
    ("unknown id without title", _with(candidates=[{"item_id": "no-such-item-xyz"}]), "candidates"),
    ("bad reasoning", _with(reasoning="some"), "reasoning"),
    ("bad candidate source", _with(candidate_source="retriever"), "candidate_source"),
    ("top_k zero", _with(top_k=0), "top_k"),
    ("top_k string", _with(top_k="ten"), "top_k"),
    ("item_id int", _with(candidates=[{"item_id": 2, "title": "A"}]), "candidates.0.item_id"),
    ("candidates not a list", _with(candidates="abc"), "candidates"),
    ("history item bad", _with(history=[{"title": "no id"}]), "history.0.item_id"),
    ("unknown field", _with(colour="red"), "colour"),
    ("rationales without reasoning", _with(include_rationales=True), "include_rationales"),
    ("too long history", _with(history=[{"item_id": str(i), "title": "T"} for i in range(501)]), "history"),
]


@pytest.mark.parametrize(("case", "body", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_names_field(client: httpx.Client, case: str, body: dict, param: str):
    response = client.post("/rank", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request"
    assert param.split(".")[0] in error["message"]
    assert client.post("/rank", json=GOOD).status_code == 200  # still serving


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"null"])
def test_non_json_or_wrong_shape_body(client: httpx.Client, raw: bytes):
    response = client.post("/rank", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] in ("body", "candidates")
    assert client.post("/rank", json=GOOD).status_code == 200


def test_unknown_route_and_method(client: httpx.Client):
    assert client.get("/nope").json()["error"]["code"] == 404
    assert client.get("/rank").status_code == 405


# Free-form fields are echoed back (GET /items/{id}, rerank's return_documents): a value the reply could not
# encode is refused on the way in, naming the field, instead of being stored and failing every read with a 500.
def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


UNECHOABLE = [
    ("integer past 64 bits", {"a": [2**70]}),
    ("nested 40 deep", _nested(40)),
]


@pytest.mark.parametrize(("case", "value"), UNECHOABLE, ids=[c[0] for c in UNECHOABLE])
def test_catalogue_fields_that_could_not_be_echoed_are_refused(client: httpx.Client, case: str, value: object):
    response = client.put("/items", json=[{"item_id": "echo-1", "title": "Chess", "extra": value}])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "0.extra"
    assert client.get("/items/echo-1").status_code == 404  # nothing was stored
    document = {"text": "Chess", "extra": value}
    rerank = client.post("/v1/rerank", json={"query": "Go", "documents": [document], "return_documents": True})
    assert rerank.status_code == 422, rerank.text
    assert any(d["param"].endswith(".extra") for d in rerank.json()["error"]["details"])
    kept = client.put("/items", json=[{"item_id": "echo-2", "title": "Chess", "extra": {"a": [2**64 - 1]}}])
    assert kept.status_code == 200
    assert client.get("/items/echo-2").json()["extra"] == {"a": [2**64 - 1]}


def test_retrieved_candidates_only_for_a_model_trained_on_them(client: httpx.Client):
    """``candidate_source="retrieval"`` changes what the model is told; a model that did not learn what it means
    refuses it, naming the field (GET /readyz lists the sources it did learn), instead of ignoring it."""
    sources = client.get("/readyz").json()["candidate_sources"]
    assert "catalogue" in sources
    response = client.post("/rank", json=_with(candidate_source="retrieval"))
    if "retrieval" in sources:
        assert response.status_code == 200, response.text
        catalogue = client.post("/rank", json=GOOD).json()["items"]
        told = {item["item_id"]: item["score"] for item in response.json()["items"]}
        assert {item["item_id"]: item["score"] for item in catalogue} != told  # the model read the line
    else:
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "candidate_source" and "retrieval" in error["message"]
    assert client.post("/rank", json=GOOD).status_code == 200
