"""Stage 1, data: a user's file (or a built-in demo dataset) in, versioned raw data out.

Enters: the `source` a task names in params.yaml (CSV, Parquet or `builtin:<name>`), or a file
given to `seqops data add`. Leaves: `data/<task>/raw.parquet`, validated by the task kind's rules
and written atomically, tracked by DVC in `data.dvc` and pushed to the remote. A file that breaks a
rule leaves nothing behind but an error naming the column and row.
"""
