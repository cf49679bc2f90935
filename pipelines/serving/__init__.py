"""Stage 6, serving: the registry's `champion` in, JSON predictions over REST out.

Enters: `models:/seqops-<task>@champion` and raw requests (a series history, a text). Leaves:
forecasts and sentiment scores. pyfunc.py holds the MLflow models that take raw input; gateway.py
the ASGI server of `seqops serve` (limits, hot reload, metrics); requests.py the request parsing;
metrics.py the Prometheus metrics; process.py starts and stops a server process.

Models registered before the stage folders existed pickled their classes as
`pipelines.serving.ForecastModel` and `pipelines.serving.SentimentModel`; the names below keep
them loadable. They resolve on first use (PEP 562): the package itself stays cheap to import, since
`seqops run` needs only process.py from it and pyfunc.py pulls in torch, Lightning and MLflow's pyfunc.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["ForecastModel", "SentimentModel"]
_LEGACY = {"ForecastModel": "pipelines.serving.pyfunc", "SentimentModel": "pipelines.serving.sentiment"}


def __getattr__(name: str) -> Any:
    if name in _LEGACY:
        return getattr(import_module(_LEGACY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
