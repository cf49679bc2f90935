"""Stage 6, serving: the registry's `champion` in, JSON predictions over REST out.

Enters: `models:/seqops-<task>@champion` and raw requests (a series history, a text). Leaves:
forecasts and sentiment scores. pyfunc.py holds the MLflow models that take raw input; gateway.py
the ASGI server of `seqops serve` (limits, hot reload, metrics); requests.py the request parsing;
metrics.py the Prometheus metrics; process.py starts and stops a server process.

Models registered before the stage folders existed pickled their classes as
`pipelines.serving.ForecastModel` and `pipelines.serving.SentimentModel`; the names below keep
them loadable in a process that has already imported this package.
"""

from pipelines.serving.pyfunc import ForecastModel
from pipelines.serving.sentiment import SentimentModel

__all__ = ["ForecastModel", "SentimentModel"]
