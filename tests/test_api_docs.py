"""The API's documentation says what the code does: the committed schema is the live one, docs/api.md names
every request and reply field and every status the schema declares, and the typed client can send every
request field."""

from __future__ import annotations

import inspect
import json
import re

import pytest

from loadtest.procs import REPO_ROOT
from service.client import AsyncR2RankClient, R2RankClient
from service.protocol import RankedItem, RankRequest, RankResponse

API_MD = REPO_ROOT / "docs" / "api.md"
OPENAPI_JSON = REPO_ROOT / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def live_schema() -> dict:
    """The schema the app serves at /openapi.json (built, not started: no engine is loaded)."""
    from service.app import create_app
    from service.config import Settings

    return json.loads(json.dumps(create_app(Settings(redis_url=None)).openapi()))


def test_committed_openapi_is_the_live_schema(live_schema):
    committed = json.loads(OPENAPI_JSON.read_text())
    assert committed == live_schema, "docs/openapi.json is stale: run r2rank-serve openapi --out docs/openapi.json"


def test_every_request_list_carries_the_bound_this_service_enforces():
    """A client generated from the schema refuses what the service refuses: the configured bounds, not the
    models' hard ones, and no request list without a bound."""
    from service.app import create_app
    from service.config import Settings

    schema = create_app(Settings(redis_url=None, max_candidates=50, max_history_request=30)).openapi()
    models = schema["components"]["schemas"]

    def max_items(model: str, field: str) -> int | None:
        prop = models[model]["properties"][field]
        return next((v.get("maxItems") for v in prop.get("anyOf", [prop]) if v.get("type") == "array"), None)

    assert max_items("RankRequest", "candidates") == 50 and max_items("RankRequest", "history") == 30
    assert max_items("RerankRequest", "documents") == 50
    bodies = [op["requestBody"]["content"]["application/json"]["schema"] for ops in schema["paths"].values()
              for op in ops.values() if "requestBody" in op]  # fmt: skip
    assert len(bodies) >= 6
    for body in bodies:  # every list a request body can carry is bounded
        if body.get("type") == "array":
            assert body.get("maxItems"), body
            continue
        name = body["$ref"].rsplit("/", 1)[-1]
        for field, prop in models[name].get("properties", {}).items():
            if any(v.get("type") == "array" for v in prop.get("anyOf", [prop])):
                assert max_items(name, field) is not None, f"{name}.{field} has no maxItems"


def _documented_fields() -> set[str]:
    """Field names in the first column of api.md's tables (``| `name` | ...``)."""
    return set(re.findall(r"^\| `([a-z_\[\].]+)`", API_MD.read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("model", [RankRequest, RankResponse])
def test_api_md_names_every_field(model):
    documented = _documented_fields()
    missing = [name for name in model.model_fields if name not in documented]
    assert not missing, f"docs/api.md does not document {model.__name__} fields {missing}"


def test_api_md_names_every_item_field():
    documented = _documented_fields()
    missing = [name for name in RankedItem.model_fields if f"items[].{name}" not in documented and name not in (
        "item_id", "rank")]  # fmt: skip
    assert not missing, f"docs/api.md does not document ranked item fields {missing}"


def test_api_md_lists_every_status_the_schema_declares(live_schema):
    text = API_MD.read_text()
    declared = {code for path in live_schema["paths"].values() for op in path.values() for code in op["responses"]}
    errors = sorted(code for code in declared if int(code) >= 400)
    missing = [code for code in errors if f"| {code} |" not in text]
    assert not missing, f"docs/api.md's error table lacks {missing}"
    for header in ("X-Request-Id", "Authorization: Bearer", "X-API-Key", "Retry-After"):
        assert header in text, header


@pytest.mark.parametrize("client", [R2RankClient, AsyncR2RankClient])
def test_typed_client_sends_every_request_field(client):
    parameters = set(inspect.signature(client.rank).parameters)
    assert set(RankRequest.model_fields) <= parameters, set(RankRequest.model_fields) - parameters


def test_the_docs_check_can_fail(tmp_path, monkeypatch):
    """A field the docs do not mention is found (the check above is not vacuous)."""
    monkeypatch.setattr("tests.test_api_docs.API_MD", tmp_path / "api.md")
    (tmp_path / "api.md").write_text("| `candidates` | list |\n")
    assert "deadline_ms" not in _documented_fields()
