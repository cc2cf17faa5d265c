"""The fleet's published-model record in Redis: what every API replica serves, signed like the API keys.

Whoever can write the record decides what every replica loads, so it carries an HMAC (``R2RANK_KEY_SECRET``)
over its canonical JSON and a fixed shape: a record that is not valid JSON, not of this shape, unsigned or
signed with another secret is ignored (and logged by the caller), never followed and never a crash. Without
a key secret no record is written or followed: publishes stay on the replica that takes them.

The record keeps one step of history (``previous_path``), so a rollback on any replica goes back to what the
fleet served before, not to whatever that replica happened to hold.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class PublishedRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=4096)
    model_version: str = Field(min_length=1, max_length=256)
    previous_path: str | None = Field(None, min_length=1, max_length=4096)
    previous_model_version: str | None = Field(None, max_length=256)
    published_at: float

    @field_validator("published_at")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("published_at must be finite")
        return value


def _mac(secret: str, record: PublishedRecord) -> str:
    message = json.dumps(record.model_dump(), sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(secret.encode(), b"published-model\0" + message, hashlib.sha256).hexdigest()


def seal(secret: str, record: PublishedRecord) -> str:
    """The record as stored: its fields and their HMAC."""
    return json.dumps({**record.model_dump(), "mac": _mac(secret, record)}, sort_keys=True)


def unseal(secret: str, raw: str) -> PublishedRecord | None:
    """The record, if ``raw`` is one of this shape signed with ``secret``; None for anything else."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("mac"), str):
            return None
        mac = data.pop("mac")
        record = PublishedRecord.model_validate(data)
    except (ValueError, ValidationError):
        return None
    return record if hmac.compare_digest(mac.encode(), _mac(secret, record).encode()) else None
