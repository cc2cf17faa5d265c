"""User histories: replace, read, delete, and append events as they happen."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Path, Response

from service.api.deps import StoreDep
from service.auth import AuthenticatedRoute, require
from service.protocol import ERROR_RESPONSES, EventIn, EventOut, HistoryEntryOut, HistoryOut, HistoryPut
from service.store import HistoryEntry

WRITE = [Depends(require("ingest"))]  # writes: an ingestion key (or admin)
READ = [Depends(require("rank"))]

router = APIRouter(route_class=AuthenticatedRoute, prefix="/users", tags=["users"], responses=ERROR_RESPONSES)

UserId = Path(min_length=1, max_length=256, description="The caller's user id.")


def _history_out(user_id: str, stored: list[HistoryEntry]) -> HistoryOut:
    return HistoryOut(
        user_id=user_id, items=[HistoryEntryOut(item_id=e.item_id, timestamp=e.timestamp) for e in stored]
    )


@router.put(
    "/{user_id}/history",
    response_model=HistoryOut,
    summary="Replace a user's history (oldest first)",
    dependencies=WRITE,
)
async def put_history(body: HistoryPut, store: StoreDep, user_id: str = UserId) -> HistoryOut:
    now = time.time()
    await store.replace_history(user_id, [(e.item_id, e.timestamp if e.timestamp is not None else now)
                                          for e in body.items])  # fmt: skip
    return _history_out(user_id, await store.get_history(user_id))


@router.get(
    "/{user_id}/history", response_model=HistoryOut, summary="A user's stored history, oldest first", dependencies=READ
)
async def get_history(store: StoreDep, user_id: str = UserId) -> HistoryOut:
    return _history_out(user_id, await store.get_history(user_id))


@router.delete("/{user_id}/history", status_code=204, summary="Forget a user's history", dependencies=WRITE)
async def delete_history(store: StoreDep, user_id: str = UserId) -> Response:
    await store.delete_history(user_id)
    return Response(status_code=204)


@router.post(
    "/{user_id}/events",
    response_model=EventOut,
    summary="Append one interaction (idempotent by event_id)",
    dependencies=WRITE,
)
async def post_event(body: EventIn, store: StoreDep, user_id: str = UserId) -> EventOut:
    """Kept in timestamp order (arrival order for equal or missing timestamps), capped to the most recent
    `R2RANK_HISTORY_MAX` items. A retried event with the same `event_id` is stored once."""
    stored, length = await store.append_event(user_id, body.item_id, body.timestamp, body.event_id)
    return EventOut(user_id=user_id, stored=stored, history_length=length)
