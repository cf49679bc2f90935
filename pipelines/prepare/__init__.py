"""Stage 2, prepare (`prepare@<task>` in dvc.yaml): raw data in, model-ready splits out.

Enters: `data/<task>/raw.parquet`. Leaves: `prepared/<task>/`: the rows with their split
(chronological for series, by a hash of each text for text) and every fitted transform (scaling, vocabulary),
fitted on the training split only. `python -m pipelines.prepare TASK` runs it.
"""
