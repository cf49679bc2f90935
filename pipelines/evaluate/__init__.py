"""Stage 4, evaluate (`evaluate@<task>`): logged models in, holdout metrics beside baselines out.

Enters: `artifacts/<task>/train.json` and `prepared/<task>/`. Leaves: `metrics/<task>.json` (every
candidate's validation and holdout metrics, the baselines', the chosen variant) and the same
metrics and plots on each MLflow run. Scoring goes through the logged pyfunc, the object that
will be served. `python -m pipelines.evaluate TASK`.
"""
