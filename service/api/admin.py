"""Model administration (admin scope): what is served, publish a new checkpoint, roll back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.deps import StateDep
from service.auth import AuthenticatedRoute, require
from service.protocol import ERROR_RESPONSES, ErrorResponse

router = APIRouter(
    route_class=AuthenticatedRoute,
    prefix="/admin/models",
    tags=["admin"],
    dependencies=[Depends(require("admin"))],
    responses={
        **ERROR_RESPONSES,
        409: {
            "model": ErrorResponse,
            "description": "Refused: eval gate, no previous model, or a remote engine (no in-process swap).",
        },
    },  # fmt: skip
)


class PublishRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"path": "/app/models/rl-2026-11-25", "force": False}]}
    )

    path: str = Field(min_length=1, description="Checkpoint directory on the server, under R2RANK_MODELS_ROOT.")
    force: bool = Field(False, description="Publish even when its eval metric is worse than the serving model's.")

    @field_validator("path")
    @classmethod
    def _no_nul(cls, path: str) -> str:
        """A NUL byte cannot be in a file path: the OS call would raise (a 500), so it is a 422 naming the field."""
        if "\x00" in path:
            raise ValueError("a path cannot contain a NUL character")
        return path


@router.get("", summary="The serving and the previous checkpoint")
async def models_status(state: StateDep) -> dict[str, Any]:
    return state.models.status()


@router.post("", summary="Load a checkpoint beside the serving one, warm it up, swap atomically, free the old")
async def publish_model(body: PublishRequest, state: StateDep) -> dict[str, Any]:
    """In-flight requests finish on the old model; new requests see the new `model_version`. Score-cache
    entries are keyed by model_version, so no score of the old model is served after the swap."""
    return await state.models.publish(body.path, body.force)


@router.post("/rollback", summary="Swap back to the previous checkpoint")
async def rollback_model(state: StateDep) -> dict[str, Any]:
    return await state.models.rollback()
