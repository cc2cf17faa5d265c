"""Request and response models of the HTTP API (input and output schemas kept apart)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from contract.evidence import Evidence

ItemId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
HARD_MAX_CANDIDATES = 1000  # schema bound; the configured R2RANK_MAX_CANDIDATES (default 200) is checked too
HARD_MAX_HISTORY = 10_000  # schema bound; the configured R2RANK_MAX_HISTORY_REQUEST (default 500) is checked too


MAX_REQUEST_ID_CHARS = 128


def valid_request_id(value: str) -> bool:
    """1..128 printable ASCII characters, no surrounding spaces: safe in a header, a log line and a key."""
    return 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable() and value == value.strip()


def _request_id(value: str) -> str:
    if not valid_request_id(value):
        raise ValueError(f"at most {MAX_REQUEST_ID_CHARS} printable ASCII characters, no surrounding spaces")
    return value


RequestId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_REQUEST_ID_CHARS), AfterValidator(_request_id)
]

# What the response encoder (orjson) can write back: a free-form value outside these is refused on the way in,
# not stored and then turned into a 500 on every read.
ECHO_INT_RANGE = (-(2**63), 2**64 - 1)
MAX_ECHO_DEPTH = 32


def _echo_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` (parsed JSON) could not be written back in a reply, or None."""
    if depth > MAX_ECHO_DEPTH:
        return f"nested deeper than {MAX_ECHO_DEPTH} levels"
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return None
    if isinstance(value, int):
        low, high = ECHO_INT_RANGE
        return None if low <= value <= high else f"integer {value} outside [{low}, {high}] (send it as a string)"
    children = value.values() if isinstance(value, dict) else value
    return next((problem for child in children if (problem := _echo_problem(child, depth + 1))), None)


def _echoable(value: Any) -> Any:
    if problem := _echo_problem(value):
        raise ValueError(problem)
    return value


class EchoedExtras(BaseModel):
    """A model whose extra fields are kept as given and echoed in replies: each must be writable back (an error
    names the field)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Annotated[Any, AfterValidator(_echoable)]] = Field(init=False)


class ItemIn(BaseModel):
    """An item in a request. Without ``title`` the title comes from the catalogue (``PUT /items``)."""

    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    title: Title | None = None


class RankRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u1",
                    "history": [
                        {"item_id": "10", "title": "Super Mario Odyssey"},
                        {"item_id": "11", "title": "The Legend of Zelda: Breath of the Wild"},
                    ],
                    "candidates": [
                        {"item_id": "42", "title": "Mario Kart 8 Deluxe"},
                        {"item_id": "43", "title": "Call of Duty: WWII - PlayStation 4"},
                    ],
                    "top_k": 10,
                    "include_rationales": True,
                    "include_evidence": True,
                    "reasoning": "full",
                }
            ]
        },
    )

    user_id: ItemId | None = Field(None, description="With no inline history, the stored history of this user is used.")
    history: list[ItemIn] | None = Field(
        None,
        max_length=HARD_MAX_HISTORY,
        description="Items the user interacted with, oldest first; wins over the stored history.",
    )
    candidates: list[ItemIn] = Field(
        min_length=1, max_length=HARD_MAX_CANDIDATES, description="Items to rank; each is scored on its own."
    )
    top_k: int | None = Field(None, ge=1, description="Return only the best k items (default: all).")
    include_rationales: bool = Field(False, description="Return each item's rationale (reasoning='full' only).")
    include_evidence: bool = Field(
        False, description="Return each item's evidence (what its prompt stated) as fields, to show or check reasons."
    )
    reasoning: Literal["full", "none"] = Field(
        "full", description="'full': reason, then score; 'none': score straight after the candidate (cheaper)."
    )
    candidate_source: Literal["catalogue", "retrieval"] = Field(
        "catalogue",
        description="Where the candidates come from. 'catalogue': any items (the score is how likely each is next "
        "against the whole catalogue); 'retrieval': a recommender's top picks for this user (such as a sequence "
        "model's), which all look likely to it, so the model weighs what sets the real next item apart. Only for a "
        "model trained on retrieved candidates (GET /readyz: candidate_sources).",
    )
    request_id: RequestId | None = Field(
        None, description="Echoed in the reply and the logs; the X-Request-Id header wins when both are sent."
    )
    deadline_ms: int | None = Field(
        None,
        ge=1,
        le=600_000,
        description="Answer within this many ms; items not scored by then get a fallback (degraded: true). "
        "Default: R2RANK_DEFAULT_DEADLINE_MS.",
    )

    @field_validator("candidates")
    @classmethod
    def _unique_candidates(cls, candidates: list[ItemIn]) -> list[ItemIn]:
        seen: set[str] = set()
        duplicates = []
        for item in candidates:
            if item.item_id in seen:
                duplicates.append(item.item_id)
            seen.add(item.item_id)
        if duplicates:
            raise ValueError(f"duplicate candidate item_id(s): {sorted(set(duplicates))[:10]}")
        return candidates


ScoreSource = Literal["engine", "cache", "popularity", "input_order"]


class HistoryRef(BaseModel):
    ref: int = Field(description="The history item's reference in the prompt and rationale: #1 is the latest.")
    item_id: str
    title: str = Field(description="The title as the model saw it.")


class LinkOut(HistoryRef):
    count: int = Field(description="Times the candidate followed this history item in training sequences.")


class SharedWordOut(HistoryRef):
    word: str


class SharedAttributeOut(HistoryRef):
    name: str
    value: str


class NextItemOut(BaseModel):
    rank: int | None = Field(
        description="Where the checkpoint's sequence model (SASRec) ranks the candidate among the whole catalogue "
        "after this history: 1 is its top pick; items in the history are not counted. null: unknown (a candidate "
        "or a history it has no id for); never estimated."
    )


class EvidenceOut(BaseModel):
    """The facts the candidate's prompt stated (computed from training interactions); a rationale may cite only
    these: each ``#k`` it names and each number it states appears here."""

    text: str = Field(description="The prompt's Evidence line.")
    links: list[LinkOut] = Field(description="Co-occurrence with the 5 latest history items, latest first.")
    older_links: int = Field(description="Co-occurrence with older history items, summed.")
    popularity: int = Field(description="Training interactions with the candidate.")
    popularity_top_percent: int | None = Field(description="Its popularity rank as top p%; null: never seen.")
    shared_word: SharedWordOut | None
    attributes: list[SharedAttributeOut]
    next_item: NextItemOut | None = Field(
        None, description="The sequence model's judgement, where the checkpoint ships one (prompt formats v3, v5)."
    )
    co_bought: int | None = Field(
        None,
        description="How many users had both the candidate and a history item in their training sequences, summed "
        "over the history's distinct items (prompt format v5); 0 for a candidate the statistics do not know. null: "
        "the checkpoint's statistics count no co-purchases (an older format).",
    )

    @classmethod
    def from_evidence(cls, evidence: Evidence, titles: dict[int, str]) -> EvidenceOut:
        word = evidence.shared_word
        return cls(
            text=evidence.text(),
            links=[LinkOut(ref=k.ref, item_id=k.item_id, title=titles[k.ref], count=k.count) for k in evidence.links],
            older_links=evidence.older_links,
            popularity=evidence.popularity,
            popularity_top_percent=evidence.popularity_top_percent,
            shared_word=SharedWordOut(ref=word.ref, item_id=word.item_id, title=titles[word.ref], word=word.word)
            if word
            else None,
            attributes=[
                SharedAttributeOut(ref=a.ref, item_id=a.item_id, title=titles[a.ref], name=a.name, value=a.value)
                for a in evidence.attributes
            ],  # fmt: skip
            next_item=NextItemOut(rank=evidence.next_item.rank) if evidence.next_item is not None else None,
            co_bought=evidence.co_bought,
        )


class RankedItem(BaseModel):
    item_id: str
    score: float | None = Field(
        description="log P(yes) - log P(no) at the answer position; higher ranks first. null for an item that "
        "was not scored by the deadline: it is ranked after every scored item, by its fallback."
    )
    rank: int = Field(ge=1)
    source: ScoreSource = Field(
        "engine", description="engine or cache: a model score; popularity or input_order: a deadline fallback."
    )
    rationale: str | None = Field(None, description="Present only when include_rationales was true.")
    rationale_withheld: bool | None = Field(
        None,
        description="With include_rationales: true when the model's rationale cited a count, item or "
        "percentile its evidence does not state, so it is not shown and the score was read from the "
        "evidence alone (include_evidence returns the facts themselves).",
    )
    evidence: EvidenceOut | None = Field(None, description="Present only when include_evidence was true.")


class RankResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    model_version: str
    items: list[RankedItem]
    degraded: bool = Field(False, description="True when some items got a fallback instead of a model score.")
    cache_hits: int = Field(0, description="Items whose score came from the score cache (no engine work).")
    timings_ms: dict[str, float]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES = {
    401: {"model": ErrorResponse, "description": "API keys are on and the request has no known key."},
    403: {"model": ErrorResponse, "description": "The API key lacks the scope this route needs."},
    413: {"model": ErrorResponse, "description": "The body is larger than R2RANK_MAX_BODY_BYTES."},
    422: {"model": ErrorResponse, "description": "Invalid request; `error.param` names the field."},
    503: {
        "model": ErrorResponse,
        "description": "Engine not ready or failed, or Redis unreachable (then nothing was stored); "
        "retry after `Retry-After`.",
    },
}


RANKING_ERROR_RESPONSES = {
    **ERROR_RESPONSES,
    429: {"model": ErrorResponse, "description": "Overloaded: engine work in flight is at its bound; retry later."},
}


# --- user histories and events -------------------------------------------------------------------------
MAX_TIMESTAMP = 253_402_300_799.0  # 9999-12-31T23:59:59Z: a larger (or infinite) time would pin an entry as newest
Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)]


class HistoryEntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    timestamp: Timestamp | None = Field(None, description="Unix seconds (finite, before year 10000); default: now.")


class HistoryPut(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"items": [{"item_id": "10"}, {"item_id": "11", "timestamp": 1732500000}]}]},
    )

    items: list[HistoryEntryIn] = Field(max_length=10_000, description="The whole history, oldest first.")


class HistoryEntryOut(BaseModel):
    item_id: str
    timestamp: float


class HistoryOut(BaseModel):
    user_id: str
    items: list[HistoryEntryOut]


class EventIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"item_id": "42", "event_id": "order-9001"}]}
    )

    item_id: ItemId
    timestamp: Timestamp | None = Field(None, description="Unix seconds (finite, before year 10000); default: now.")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="Idempotency key: an event id already stored for this user is not stored again."
    )


class EventOut(BaseModel):
    user_id: str
    stored: bool = Field(description="False when event_id was seen before (a retry): nothing changed.")
    history_length: int


# --- catalogue ------------------------------------------------------------------------------------------
class CatalogItem(EchoedExtras):
    """A catalogue entry; fields beyond item_id and title are kept as given."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"item_id": "42", "title": "Mario Kart 8 Deluxe", "platform": "Switch"}]},
    )

    item_id: ItemId
    title: Title


class ItemsUpserted(BaseModel):
    upserted: int
