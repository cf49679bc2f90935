from pipelines.prepare.stage import prepare
from pipelines.runner import run_stage_main

run_stage_main("prepare", prepare)
