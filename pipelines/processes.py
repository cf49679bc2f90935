"""Child processes that never outlive the command that started them, and who holds what.

A `kill -9` of a seqops command runs no cleanup code, so cleanup cannot live only in `finally:`
blocks. Every server a seqops command starts (Prefect's API, `mlflow models serve`, `mlflow ui`,
`prefect server start`) runs under a guard, `python -m pipelines.processes PARENT_PID -- CMD...`:
the guard leads its own process group, asks the kernel for SIGTERM when its parent dies
(prctl PR_SET_PDEATHSIG), and on SIGTERM, SIGINT, its parent's death or its command's exit stops
the whole group, so uvicorn workers and job runners go with it. Each guarded group is also
recorded in <SEQOPS_HOME>/pids/; `reap_orphans` (run before any server starts) stops the groups
whose owner is gone, in case a guard itself was SIGKILLed.

A process is named by pid + start time + host (`Holder`): a pid reused by an unrelated process
never counts as the holder, so nothing here kills or trusts a stranger.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import psutil

PIDS_DIR = "pids"
GUARD_MODULE = "pipelines.processes"  # `python -m` runs the guard from this module
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class Holder:
    """A process as recorded by whoever depends on it being alive: pid, start time, host, command."""

    pid: int
    started: float
    host: str
    command: str = ""

    @classmethod
    def current(cls) -> "Holder":
        return cls.of(os.getpid())  # type: ignore[return-value]

    @classmethod
    def of(cls, pid: int) -> "Holder | None":
        try:
            process = psutil.Process(pid)
            return cls(pid, process.create_time(), socket.gethostname(), " ".join(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Holder":
        return cls(int(data["pid"]), float(data["started"]), str(data["host"]), str(data.get("command", "")))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def alive(self) -> bool:
        """Whether this very process still runs. On another host nobody can tell: it counts as alive."""
        if self.host != socket.gethostname():
            return True
        try:
            process = psutil.Process(self.pid)
            return abs(process.create_time() - self.started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started).strftime("%Y-%m-%d %H:%M:%S")
        command = f" (`{self.command[:80]}`)" if self.command else ""
        return f"pid {self.pid}{command} on {self.host}, running since {since}"


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when the thread that started it exits (no-op elsewhere).

    Set from inside the child rather than in a `preexec_fn`: Popen's preexec_fn is unsafe in a
    threaded parent, and Prefect always runs threads. A parent that died before this call leaves the
    child orphaned already, so that case exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent == 1 or not psutil.pid_exists(parent):
        os.kill(os.getpid(), sig)


def group_members(pgid: int, not_before: float = 0.0) -> list[psutil.Process]:
    """The live processes of process group `pgid` started at or after `not_before` (a reused pgid is not ours).

    Descendants of the group's leader that moved to a session of their own count too.
    """
    found: dict[int, psutil.Process] = {}
    try:
        found.update((p.pid, p) for p in psutil.Process(pgid).children(recursive=True))
    except psutil.Error:
        pass
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                found[process.pid] = process
        except (OSError, psutil.Error):  # gone meanwhile, or not ours to see
            continue
    members = []
    for process in found.values():
        try:
            if process.create_time() >= not_before - 1.0 and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except psutil.Error:
            continue
    return members


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def kill_group(pgid: int, grace: float = STOP_GRACE_S, not_before: float = 0.0, spare: int | None = None) -> None:
    """SIGTERM every member of group `pgid` (but `spare`), SIGKILL those left after `grace` seconds."""
    members = [p for p in group_members(pgid, not_before) if p.pid != spare]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in members:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        members = _wait_gone(members, grace if sig == signal.SIGTERM else 10.0)
        if not members:
            return


def stop_group(process: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the process's group, SIGKILL what is left after `grace` seconds, and reap the leader.

    Servers run in their own session (start_new_session=True), so the group holds everything
    they started (mlflow's uvicorn, prefect's API workers); none of it may outlive a stop.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the group may outlive its leader for a moment
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit, as Ctrl-C raises KeyboardInterrupt, so `finally:` cleanup always runs.

    (A handler installed inside, such as flow.serve's, takes over until it is removed.)
    """
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_interrupted = threading.Event()


def _interrupt(signum: int, frame: object) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


@contextmanager
def remember_interrupts() -> Iterator[None]:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt, as Python's own handler does, and is remembered until the
    block ends: `raise_if_interrupted` then stops at the next stage boundary.

    Why remembered: a KeyboardInterrupt raised while Python runs a weakref callback or a __del__ is printed as
    "Exception ignored in ..." and dropped, so a Ctrl-C at the wrong instant between two stages was lost and the
    run went on to promote. Main thread only (signal handlers live there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted.clear()
    previous = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()


def _remember(signum: int, frame: object) -> None:
    _interrupted.set()


STOP_AT_STAGE_BOUNDARY = signal.SIGUSR1  # what `seqops schedule` sends a run it stops


@contextmanager
def stop_at_stage_boundaries() -> Iterator[None]:
    """For a run `seqops schedule` started: STOP_AT_STAGE_BOUNDARY is only remembered, so the stage in flight
    ends cleanly and `raise_if_interrupted` stops the run at the next stage boundary.

    Not SIGINT: DVC ignores it while a stage's command runs, so a stop during a stage was lost. Not SIGTERM:
    Prefect cancels a run with it, and each subflow's engine installs its handler again. The process also leads
    a process group of its own, so a terminal's Ctrl-C reaches the scheduler alone, which relays it, and not
    the stage subprocesses and Dask workers this run starts (they died mid-stage, printing tracebacks).
    Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    os.setpgid(0, 0)
    _interrupted.clear()
    previous = signal.signal(STOP_AT_STAGE_BOUNDARY, _remember)
    try:
        yield
    finally:
        signal.signal(STOP_AT_STAGE_BOUNDARY, previous)
        _interrupted.clear()


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if Ctrl-C came during `remember_interrupts` (even if the first one was swallowed) or
    `stop_at_stage_boundaries`."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


# --- guarded children ---------------------------------------------------------------------------

class Guarded:
    """A command started under the guard, in its own process group, recorded under <home>/pids/.

    Start it from a thread that lives as long as the server (the main thread of a command): Linux
    sends the parent-death signal when the thread that started the guard ends.
    """

    def __init__(self, command: list[str], home: Path, label: str, env: dict[str, str] | None = None,
                 log: Path | None = None, cwd: Path | None = None) -> None:
        reap_orphans(home)
        pids = home / PIDS_DIR
        pids.mkdir(parents=True, exist_ok=True)
        guard = [sys.executable, "-m", GUARD_MODULE, str(os.getpid()), "--", *command]
        out = open(log, "ab") if log else None  # no log: the command's output is this process's
        try:
            self.process = subprocess.Popen(guard, stdout=out, stderr=subprocess.STDOUT if out else None,
                                            stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        finally:
            if out:
                out.close()
        leader = Holder.of(self.process.pid) or Holder(self.process.pid, time.time(), socket.gethostname())
        self.record = pids / f"{label}-{self.process.pid}.json"
        self.record.write_text(json.dumps({"label": label, "owner": Holder.current().as_dict(),
                                           "leader": leader.as_dict(), "command": command}))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop the group; a second Ctrl-C or SIGTERM waits until that is done."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            stop_group(self.process, grace)
            self.record.unlink(missing_ok=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _records(home: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((home / PIDS_DIR).glob("*.json")):
        try:
            yield path, json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # half-written by a process killed while writing it


def _still_ours(leader: Holder) -> bool:
    """Whether group `leader.pid` is still the recorded one: its guard, or what remains of it.

    Linux never hands out a pid still used as a process-group id, so while a member of the old
    group lives, no stranger can hold the leader's pid; a stranger that does means the group is gone.
    """
    if leader.host != socket.gethostname():
        return False
    if not psutil.pid_exists(leader.pid):
        return True
    try:
        return leader.alive() and GUARD_MODULE in psutil.Process(leader.pid).cmdline()
    except psutil.Error:
        return False


def reap_orphans(home: Path, grace: float = 10.0) -> list[str]:
    """Stop the server groups recorded under <home>/pids/ whose owner is gone; what was stopped.

    A group counts as ours only while its leader is the recorded guard (pid, start time and command
    line), or, once the leader is gone, for members started after it.
    """
    stopped = []
    for path, record in _records(home):
        owner, leader = Holder.from_dict(record["owner"]), Holder.from_dict(record["leader"])
        if owner.alive():
            continue
        if _still_ours(leader) and group_members(leader.pid, leader.started):
            kill_group(leader.pid, grace, not_before=leader.started)
            stopped.append(f"{record.get('label', 'server')} (process group {leader.pid})")
        path.unlink(missing_ok=True)
    return stopped


def guard(parent: int, command: list[str]) -> int:
    """Run `command` in this process's group until it exits, this process is told to stop, or `parent` dies."""
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def stop(signum: int, frame: object) -> None:
        for sig in stops:  # a second signal (a stop and the parent's death at once) must not cut the cleanup
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for sig in stops:
        signal.signal(sig, stop)
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:
        return 128 + signal.SIGTERM
    child = subprocess.Popen(command)
    try:
        return child.wait()
    finally:
        for sig in stops:
            signal.signal(sig, signal.SIG_IGN)
        kill_group(os.getpgrp(), spare=os.getpid())
        if [p for p in group_members(os.getpgrp()) if p.pid != os.getpid()]:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # last resort, this guard included


if __name__ == "__main__":
    sys.exit(guard(int(sys.argv[1]), sys.argv[3:]))
