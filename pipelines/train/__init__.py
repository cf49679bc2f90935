"""Stage 3, train (`train@<task>`): prepared splits in, one logged model per variant out.

Enters: `prepared/<task>/` and the task's variants in params.yaml. Leaves: an MLflow parent run
per retrain with one child run per variant (params, loss curves, gradient health, the pyfunc that
serves raw input) and `artifacts/<task>/train.json`, which names them. models/ does the learning;
this stage wires data modules, tracking and plots around it. `python -m pipelines.train TASK`.
"""
