"""The one base of every seqops error, so each edge (the CLI, the stage runner, the gateway) catches one type.

A message is written where the error is raised and says what was wrong, where (file, row, key,
field) and what to do; the edges only print it and choose the exit code or HTTP status. Anything
else that escapes is a bug, and the edges show it as one.
"""

from __future__ import annotations


class SeqopsError(Exception):
    """A failure a user can act on; its message is complete as it stands."""
