"""What every params.yaml section shares: strict, frozen models and the error that names the bad key."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import SeqopsError


class ConfigError(SeqopsError, ValueError):
    """params.yaml (or an override) does not match the schema; the message names the key."""


class _Strict(BaseModel):
    """Unknown keys are errors (a typo must not be ignored) and loaded settings never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
