"""seqops pipelines: the glue around models/, one subpackage per stage of the data's trip.

data/ -> prepare/ -> train/ -> evaluate/ -> registry.py -> serving/, run by orchestration/ and
told apart by task kind in tasks/ only. project.py knows paths and environment defaults,
config.py the params.yaml schema, errors.py the one error base, cli.py the `seqops` command.
"""
