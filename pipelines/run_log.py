"""The run's log file: descriptors 1 and 2 of a run and of every child it starts, copied into one file.

A run's children (DVC's stage subprocesses, Dask workers, Prefect's temporary server) write to the
descriptors they inherit, not to Python's logging, so the only way to keep all of it is to point 1
and 2 at a pipe for the length of the run and copy the pipe into .seqops/logs/<timestamp>-run.log
(and onto the terminal when verbose). pipelines/console.py decides what the terminal shows.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

POLL_S = 0.2


class Capture:
    """Descriptors 1 and 2 (this process's and its children's) into a pipe, copied to the log file."""

    def __init__(self, log: Path, echo: bool) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.echo = echo
        self.saved = (os.dup(1), os.dup(2))
        self.terminal_fd = os.dup(1)
        self._log = open(log, "ab")
        self._read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._pump, name="seqops-log", daemon=True).start()

    def _pump(self) -> None:
        """Until every writer is gone (children may outlive the session: keep their output in the log)."""
        while True:
            select.select([self._read], [], [], POLL_S)
            with self._lock:
                chunk = os.read(self._read, 65536) if readable(self._read) else None
                if chunk == b"":
                    os.close(self._read)
                    self._log.close()
                    self.closed = True
                    return
                if chunk:
                    self._log.write(chunk)
                    self._log.flush()
                    if self.echo:
                        os.write(self.saved[1], chunk)

    def stop(self) -> None:
        """Give 1 and 2 back; copy what is already in the pipe; echo nothing after this."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with self._lock:
                if self.closed or not readable(self._read):
                    break
            time.sleep(0.01)
        with self._lock:
            self.echo = False
            for fd in self.saved:
                os.close(fd)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def append(log: Path, text: str) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write(text)


def new_log(directory: Path) -> Path:
    """<timestamp>-run.log; a second run started in the same second gets <timestamp>-2-run.log."""
    stamp, n = datetime.now().strftime("%Y%m%d-%H%M%S"), 1
    while True:
        try:
            path = directory / f"{stamp}{'' if n == 1 else f'-{n}'}-run.log"
            path.open("x").close()
            return path
        except FileExistsError:
            n += 1
