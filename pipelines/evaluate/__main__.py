from pipelines.evaluate.stage import evaluate_task
from pipelines.runner import run_stage_main

run_stage_main("evaluate", evaluate_task)
