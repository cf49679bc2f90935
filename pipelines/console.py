"""The console of `seqops run`: a few lines a person reads, and the full log beside them.

A run's process and every child it starts (DVC's stage subprocesses, Dask workers, Prefect's
temporary server) write to file descriptors 1 and 2. For the length of a run those point to a
pipe; a thread copies it into .seqops/logs/<timestamp>-run.log, and onto the terminal only when
verbose (`--verbose` or SEQOPS_LOG=debug). The terminal itself gets:

- one line per stage and task with its duration (`timed`, logger `seqops.console`, from the flow);
- a progress line while variants train: the training callback appends events to a file named by
  SEQOPS_PROGRESS_FILE (a variant may train in a Dask worker whose stdout is not the terminal),
  and the session tails it: redrawn in place on a TTY, one line per finished variant otherwise;
- the summary tables (pipelines/summary.py).

A stage subprocess that fails writes its one-sentence cause to SEQOPS_CAUSE_FILE (the stage
runner); the session turns the flow's "stage X failed ... exited with 1" into that cause, so it
is the run's last line. Children inherit all three variables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, TextIO

from pipelines import run_log
from pipelines.errors import SeqopsError
from pipelines.run_log import POLL_S

LOG_ENV = "SEQOPS_LOG"             # debug: the full logs on the terminal too; info (default): the short console
PROGRESS_ENV = "SEQOPS_PROGRESS_FILE"
CAUSE_ENV = "SEQOPS_CAUSE_FILE"
LEVELS = ("info", "debug")
STAGE_LOGGER = "seqops.console"
CLEAR_LINE = "\r\033[K"

_stage_log = logging.getLogger(STAGE_LOGGER)
_stage_log.setLevel(logging.INFO)  # Prefect leaves the root logger at WARNING; stage lines are INFO
_last_log: Path | None = None      # the log of this process's latest run, named by the bug report


class ConsoleError(SeqopsError):
    """The console's own settings are wrong (SEQOPS_LOG)."""


class StageFailed(SeqopsError):
    """A stage subprocess refused its input; the message is the stage runner's one-line cause."""


class StageBug(Exception):
    """A stage subprocess died of an unexpected exception; the message is its one-line cause."""


def verbose_requested(flag: bool = False) -> bool:
    """--verbose, or SEQOPS_LOG=debug."""
    level = (os.environ.get(LOG_ENV) or "info").strip().lower()
    if level not in LEVELS:
        raise ConsoleError(f"{LOG_ENV}={os.environ[LOG_ENV]!r}: use one of {list(LEVELS)}")
    return flag or level == "debug"


# --- what stages and training report (any process) ------------------------------------------------

def stage_line(task: str, stage: str, status: str, seconds: float | None = None, note: str = "") -> str:
    took = f"{seconds:6.1f}s" if seconds is not None else ""
    return f"{task:<10}{stage:<10}{status:<11}{took}  {note}".rstrip()


@dataclass
class Step:
    """What a timed step says when it ends: its status and an optional note."""

    status: str = "done"
    note: str = ""


@contextmanager
def timed(task: str, stage: str) -> Iterator[Step]:
    """Report one line for a step when it ends: status, duration, note; `failed` if it raises."""
    step, start = Step(), time.monotonic()
    try:
        yield step
    except BaseException:
        _stage_log.info(stage_line(task, stage, "failed", time.monotonic() - start))
        raise
    _stage_log.info(stage_line(task, stage, step.status, time.monotonic() - start, step.note))


def report(task: str, stage: str, status: str, note: str = "") -> None:
    """One line for a step that did not run (e.g. up to date)."""
    _stage_log.info(stage_line(task, stage, status, note=note))


def training_progress(label: str, epoch: int, epochs: int, metrics: dict[str, float],
                      seconds: float | None = None) -> None:
    """An epoch of variant `label` ("task/variant") ended (`seconds` set: training ended).

    To the run's progress file when a session listens; otherwise one line per epoch on stdout.
    """
    path = os.environ.get(PROGRESS_ENV)
    if path:
        event = {"label": label, "epoch": epoch, "epochs": epochs, "metrics": metrics, "seconds": seconds}
        with open(path, "a", encoding="utf-8") as out:  # one short O_APPEND write: whole lines across processes
            out.write(json.dumps(event) + "\n")
    elif seconds is None:
        print(f"  {label} epoch {epoch}/{epochs} {_metrics_text(metrics)}", flush=True)


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{key}={value:.4f}" for key, value in sorted(metrics.items()))


def record_cause(message: str, bug: bool = False) -> None:
    """Write a failed stage's one-line cause where the run's session reads it (no-op outside a run)."""
    path = os.environ.get(CAUSE_ENV)
    if path:
        Path(path).write_text(json.dumps({"cause": message, "bug": bug}), encoding="utf-8")


def recorded_cause() -> dict[str, Any] | None:
    path = os.environ.get(CAUSE_ENV)
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- the session (the CLI's process) ---------------------------------------------------------------

class Terminal:
    """Lines to the person, with at most one status line kept at the bottom (TTY only)."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream, self.tty = stream, tty
        self._status = ""
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"{CLEAR_LINE if self._status else ''}{text}\n{self._status}")
            self.stream.flush()

    def status(self, text: str) -> None:
        if not self.tty:
            return
        with self._lock:
            self._status = text[:self.width()]
            self.stream.write(f"{CLEAR_LINE}{self._status}")
            self.stream.flush()

    def width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns - 1
        except (OSError, ValueError, AttributeError):
            return 119


class _Progress:
    """Tails the progress file; renders the training variants."""

    def __init__(self, path: Path, terminal: Terminal) -> None:
        self.path, self.terminal = path, terminal
        self.active: dict[str, str] = {}
        self._offset, self._lock, self._stop = 0, threading.Lock(), threading.Event()
        path.write_text("")
        self._thread = threading.Thread(target=self._follow, name="seqops-progress", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        """Render every complete event written since the last poll."""
        with self._lock:
            with open(self.path, encoding="utf-8") as events:
                events.seek(self._offset)
                text = events.read()
            complete = text[: text.rfind("\n") + 1]
            self._offset += len(complete.encode("utf-8"))
            for raw in complete.splitlines():
                self._show(json.loads(raw))

    def _show(self, event: dict[str, Any]) -> None:
        task, _, variant = event["label"].partition("/")
        progress = f"{variant} epoch {event['epoch']}/{event['epochs']} {_metrics_text(event['metrics'])}".rstrip()
        if event["seconds"] is None:
            self.active[event["label"]] = progress
        else:
            self.active.pop(event["label"], None)
            if not self.terminal.tty:
                self.terminal.line(stage_line(task, "train", variant, event["seconds"],
                                              f"{event['epoch']} epochs  {_metrics_text(event['metrics'])}"))
        shown = "  |  ".join(self.active.values())
        self.terminal.status(f"{task:<10}{'train':<10}{shown}" if shown else "")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
        self.terminal.status("")


class _StageLines(logging.Handler):
    """Stage lines of the flow (logger seqops.console) onto the session."""

    def __init__(self, session: "Session") -> None:
        super().__init__(logging.INFO)
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        self.session.say(record.getMessage())


class Session:
    """A run's console: the log file, the capture, the progress view and the stage lines."""

    def __init__(self, root: Path, verbose: bool) -> None:
        from pipelines.project import logs_dir

        self.verbose = verbose
        self.log = run_log.new_log(logs_dir(root))
        self._cause = self.log.with_suffix(".cause")
        self._progress_file = self.log.with_suffix(".progress")
        self._capture: run_log.Capture | None = None
        self._progress: _Progress | None = None
        self._handler = _StageLines(self)

    def __enter__(self) -> "Session":
        global _last_log
        _last_log = self.log
        self._saved_env = {k: os.environ.get(k) for k in (LOG_ENV, CAUSE_ENV, PROGRESS_ENV)}
        os.environ[LOG_ENV] = "debug" if self.verbose else "info"
        os.environ[CAUSE_ENV] = str(self._cause)
        if _has_fd(sys.stdout) and _has_fd(sys.stderr):
            self._capture = run_log.Capture(self.log, echo=self.verbose)
            stream = open(self._capture.terminal_fd, "w", buffering=1, encoding="utf-8", errors="replace")
            self.terminal = Terminal(stream, os.isatty(self._capture.terminal_fd))
        else:  # an in-process harness (a test's CliRunner): no descriptors to capture
            self.terminal = Terminal(sys.stdout, tty=False)
        if self.verbose:
            os.environ.pop(PROGRESS_ENV, None)  # the training callback prints its epochs into the log
        else:
            os.environ[PROGRESS_ENV] = str(self._progress_file)
            self._progress = _Progress(self._progress_file, self.terminal)
        _stage_log.addHandler(self._handler)
        _stage_log.propagate = False
        self.terminal.line(f"full log: {self.log}" + ("" if self.verbose else "  (--verbose shows it here)"))
        return self

    def say(self, text: str = "") -> None:
        """A line for the person: on the terminal (quiet) and in the log (verbose: on the terminal through it)."""
        if self._progress is not None:
            self._progress.poll()  # variant lines before the stage line that follows them
        if self._capture is None:
            self.terminal.line(text)
            run_log.append(self.log, text + "\n")
            return
        if not self.verbose:
            self.terminal.line(text)
        print(text, file=sys.stderr, flush=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        try:
            if isinstance(error, Exception) and not isinstance(error, SeqopsError):  # a bug: its traceback
                text = "".join(traceback.format_exception(kind, error, tb))
                if self._capture is None:
                    run_log.append(self.log, text)
                else:
                    print(text, file=sys.stderr, flush=True)  # the log, and the terminal when verbose
            cause = _stage_cause(error)
        finally:
            self._close()
        if cause is not None and cause["bug"]:
            raise StageBug(cause["cause"]) from error
        if cause is not None:
            raise StageFailed(cause["cause"]) from error

    def _close(self) -> None:
        _stage_log.removeHandler(self._handler)
        _stage_log.propagate = True
        if self._progress is not None:
            self._progress.stop()
        if self._capture is not None:
            self._capture.stop()
            self.terminal.stream.close()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for path in (self._cause, self._progress_file):
            path.unlink(missing_ok=True)


def _stage_cause(error: BaseException | None) -> dict[str, Any] | None:
    """The cause a stage recorded, if `error` is that stage failing (a retried stage's stale cause is not)."""
    cause = recorded_cause()
    if error is None or cause is None:
        return None
    where = cause["cause"].split(":", 1)[0]
    return cause if where in str(error) else None


def _has_fd(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


_REFUSED = re.compile(r"\b(401|403)\b")


def refused_access(error: BaseException) -> str | None:
    """What to set when `error` (or an exception it was raised from) is a tracking or Prefect server refusing
    these credentials (HTTP 401 / 403): a configuration to fix, not a bug in seqops. None otherwise."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        name = type(error).__name__
        if name == "MlflowException" and (_REFUSED.search(str(error).split("Response body", 1)[0])
                                           or getattr(error, "error_code", "") in ("UNAUTHENTICATED",
                                                                                  "PERMISSION_DENIED")):
            return (f"the MLflow server at {os.environ.get('MLFLOW_TRACKING_URI', 'MLFLOW_TRACKING_URI')} refused "
                    f"these credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an identity it "
                    f"knows with the rights this command needs (README \"Scaled setup\")")
        if status in (401, 403) and "prefect" in type(error).__module__.lower() + str(getattr(response, "url", "")):
            return (f"the Prefect API at {os.environ.get('PREFECT_API_URL', 'PREFECT_API_URL')} refused this "
                    f"request ({status}): set PREFECT_API_AUTH_STRING to the server's auth string "
                    f"(README \"Scaled setup\")")
        error = error.__cause__ or error.__context__
    return None


def bug_log(error: BaseException, command: str) -> Path:
    """Where the traceback of an unexpected exception is: the run's log, or a new log holding it."""
    if _last_log is not None:
        return _last_log
    from pipelines.project import logs_dir

    path = logs_dir() / f"{datetime.now():%Y%m%d-%H%M%S}-{command}.log"
    run_log.append(path, "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    return path
