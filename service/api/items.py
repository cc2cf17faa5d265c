"""The item catalogue: bulk upsert and lookup. /rank takes titles from here for candidates sent by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path

from service.api.deps import StoreDep
from service.auth import AuthenticatedRoute, require
from service.exceptions import NotFound
from service.protocol import ERROR_RESPONSES, CatalogItem, ErrorResponse, ItemsUpserted

WRITE = [Depends(require("ingest"))]  # writes: an ingestion key (or admin)
READ = [Depends(require("rank"))]

router = APIRouter(route_class=AuthenticatedRoute, prefix="/items", tags=["items"], responses=ERROR_RESPONSES)

MAX_ITEMS_PER_CALL = 20_000


@router.put(
    "", response_model=ItemsUpserted, summary="Insert or replace catalogue items (all or nothing)", dependencies=WRITE
)
async def put_items(
    items: Annotated[
        list[CatalogItem],
        Body(
            max_length=MAX_ITEMS_PER_CALL,
            examples=[[{"item_id": "42", "title": "Mario Kart 8 Deluxe"}, {"item_id": "43", "title": "Halo 3"}]],
        ),
    ],
    store: StoreDep,
) -> ItemsUpserted:
    return ItemsUpserted(upserted=await store.upsert_items(item.model_dump() for item in items))


@router.get(
    "/{item_id}",
    response_model=CatalogItem,
    summary="One catalogue item",
    responses={404: {"model": ErrorResponse, "description": "No such item in the catalogue."}},
    dependencies=READ,
)
async def get_item(store: StoreDep, item_id: Annotated[str, Path(min_length=1, max_length=256)]) -> CatalogItem:
    found = await store.get_items([item_id])
    if item_id not in found:
        raise NotFound(f"item_id: no item {item_id!r} in the catalogue", "item_id")
    return CatalogItem(item_id=item_id, **found[item_id])
