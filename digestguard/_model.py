"""The one pydantic base class for every domain and stage model: unknown fields are refused, never dropped."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """A strict model: a typo'd or unexpected key is an error naming the field."""

    model_config = ConfigDict(extra="forbid")
