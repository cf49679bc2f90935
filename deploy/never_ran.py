"""Exit 0 when a Prefect deployment has never had a run due, 1 otherwise.

    python deploy/never_ran.py FLOW/DEPLOYMENT

A run is due once its expected start time has passed, whatever its state: a finished run, one in
progress, a manual run still waiting for a worker, a missed 03:00 run. Only the schedule's future
runs do not count. deploy/prefect-deploy.sh uses this to start the first retrain of a fresh stack
once, not on every `docker compose up`.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone

from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)


async def due_runs(name: str) -> int:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(timezone.utc))
            ),
            limit=1,
        )
    return len(runs)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit("usage: never_ran.py FLOW/DEPLOYMENT")
    return 0 if asyncio.run(due_runs(argv[0])) == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
