from pipelines.runner import run_stage_main
from pipelines.train.stage import train_task

run_stage_main("train", train_task)
