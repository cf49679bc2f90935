"""Orchestration: the stages above, run in order as the Prefect flow `retrain`, on a schedule.

Enters: the task names (default: all in params.yaml). Leaves: each task's stages run or skipped as
DVC finds them stale, its variants trained in parallel, and a promotion decision. flows.py is the
flow; policy.py what is retried, where variants run and what may run at once; schedule.py the cron
deployment and the Prefect servers; recovery.py what a killed retrain left behind and how the next
one clears it. Nothing here re-implements a stage.
"""
