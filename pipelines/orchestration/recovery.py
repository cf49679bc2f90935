"""What a killed retrain leaves behind, and how the next one clears it without hand repair.

A `kill -9` runs no cleanup, so each thing a retrain holds is recorded with its holder (pid, start
time, host: pipelines.processes.Holder) where the next run can check whether that holder still lives:

- the slot of the Prefect global concurrency limit retrain-<task>: a record per holder under
  <SEQOPS_HOME>/holders/retrain-<task>/. Prefect reclaims a slot only when its lease expires, and the
  temporary API server of a `seqops run` keeps leases in memory, so a dead run's slot stays taken
  forever. The next run releases the slots of dead holders; a live holder makes it wait, saying
  for whom and for how long at most, then stop with one line naming it (RetrainBusy).
- DVC's locks: .dvc/tmp/lock is an fcntl lock the kernel frees with its holder; entries of dead
  (or reused) pids in .dvc/tmp/rwlock are removed.
- MLflow runs left RUNNING: every run carries its owner's tags (`owner_tags`); the next retrain of
  the task marks the runs whose owner is gone KILLED, with the reason in `seqops.killed_reason`.
- server processes: pipelines.processes.reap_orphans.
- DVC files rewritten in place (dvc.lock, data.dvc) and cut short by the kill: `repair_dvc_files`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from pipelines.errors import SeqopsError
from pipelines.processes import Holder, reap_orphans
from pipelines.project import seqops_home

HOLDERS_DIR = "holders"
OWNER_TAG = "seqops.owner"  # the run's owning process, "pid@host@start time"
KILLED_REASON_TAG = "seqops.killed_reason"


class RetrainBusy(SeqopsError):
    """A live retrain of the same task holds the slot; the message names it."""


# --- global concurrency slots ---------------------------------------------------------------------

class SlotHolders:
    """The recorded holders of one global concurrency limit, one JSON file per holder (or waiter).

    A record is written before the slot is requested and given the time of the grant once granted,
    so a run killed while still waiting never has a slot released on its behalf.
    """

    def __init__(self, limit: str, home: Path | None = None) -> None:
        self.limit = limit
        self.folder = (home or seqops_home()) / HOLDERS_DIR / limit
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mine = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise check-and-release between processes of this host (the kernel drops it if we die)."""
        with open(self.folder.parent / f"{self.limit}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def records(self) -> list[tuple[Path, Holder, float | None]]:
        """(file, holder, when its slot was granted: None while it waits) for every other record."""
        found = []
        for path in sorted(self.folder.glob("*.json")):
            if path == self.mine:
                continue
            try:
                data = json.loads(path.read_text())
                found.append((path, Holder.from_dict(data["holder"]), data["granted"]))
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # half-written by a process killed while writing it
        return found

    def reclaim(self, release: Callable[[int, float], None]) -> list[Holder]:
        """Release the slots of dead holders (`release(slots, occupancy_seconds)`); the live holders.

        Records of dead processes are forgotten, holding or waiting. A dead holder's occupancy runs
        from its grant to now: when it died is not known.
        """
        live, dead, occupancy = [], 0, 0.0
        for path, holder, granted in self.records():
            if holder.alive():
                if granted is not None:
                    live.append(holder)
                continue
            if granted is not None:
                dead, occupancy = dead + 1, occupancy + max(time.time() - granted, 1.0)
            path.unlink(missing_ok=True)
        if dead:
            release(dead, occupancy)
        return live

    def _write(self, granted: float | None) -> None:
        self.mine.write_text(json.dumps({"holder": Holder.current().as_dict(), "granted": granted}))

    @contextmanager
    def waiting(self) -> Iterator[Callable[[], None]]:
        """Record this process as waiting for the duration; call the yielded function once the slot is granted."""
        self._write(granted=None)
        try:
            yield lambda: self._write(granted=time.time())
        finally:
            self.mine.unlink(missing_ok=True)


def waiting_message(limit: str, live: list[Holder], wait_s: float) -> str:
    held = "; ".join(holder.describe() for holder in live)
    return f"waiting up to {wait_s:.0f}s for {limit}, held by another retrain: {held}"


def busy_message(limit: str, live: list[Holder], waited: float) -> str:
    if live:
        return (f"{limit} is still held after {waited:.0f}s by another retrain: {live[0].describe()}. Wait for "
                f"it to finish, or stop it (`kill {live[0].pid}`) and run again: a killed run's slot is "
                f"released on the next start")
    return (f"{limit} had no free slot within {waited:.0f}s and no retrain on this host holds one: a run on "
            f"another host holds it, or it was taken before seqops recorded holders. Release it with "
            f"`prefect gcl update {limit} --active-slots 0` once no retrain is running")


# --- DVC locks -----------------------------------------------------------------------------------

def _pid_alive_since(pid: int, not_after: float) -> bool:
    """Whether `pid` is a live process that started no later than `not_after` (else: dead, or a reused pid)."""
    holder = Holder.of(pid)
    return holder is not None and holder.alive() and holder.started <= not_after + 1.0


def clear_stale_dvc_locks(root: Path) -> list[str]:
    """Drop the entries of dead (or reused) pids from DVC's .dvc/tmp/rwlock; what was removed.

    DVC drops entries of dead pids itself, but keeps one whose pid a new process reused. The
    workspace lock .dvc/tmp/lock needs nothing: it is an fcntl lock (zc.lockfile), which the kernel
    releases when its holder dies (with core.hardlink_lock it is a file that never goes stale on
    its own: leave that option off).
    """
    from dvc.lock import make_lock

    tmp = root / ".dvc" / "tmp"
    removed: list[str] = []
    rwlock = tmp / "rwlock"
    if rwlock.is_file():
        with make_lock(str(tmp / "rwlock.lock"), tmp_dir=str(tmp)):
            written = rwlock.stat().st_mtime
            try:
                lock: dict[str, Any] = json.loads(rwlock.read_text() or "{}")
            except ValueError:
                lock = {}
                removed.append(f"unreadable {rwlock}")
            for mode in ("read", "write"):
                for path, infos in list(lock.get(mode, {}).items()):
                    entries = infos if isinstance(infos, list) else [infos]
                    kept = [info for info in entries if _pid_alive_since(int(info["pid"]), written)]
                    removed += [f"{mode} lock on {path} of dead pid {info['pid']} (`{info.get('cmd', '')}`)"
                                for info in entries if info not in kept]
                    if not kept:
                        del lock[mode][path]
                    else:
                        lock[mode][path] = kept if isinstance(infos, list) else kept[0]
            if removed:
                rwlock.write_text(json.dumps(lock))
    return removed


# --- MLflow runs ---------------------------------------------------------------------------------

def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns an MLflow run, so a later run can tell it died."""
    me = Holder.current()
    return {OWNER_TAG: f"{me.pid}@{me.host}@{me.started!r}"}


def _owner(tags: dict[str, str]) -> Holder | None:
    try:
        pid, host, started = tags[OWNER_TAG].split("@")
        return Holder(int(pid), float(started), host)
    except (KeyError, ValueError):
        return None


def mark_killed_runs(root: Path, task: str) -> list[str]:
    """Mark the task's RUNNING MLflow runs whose owning process is gone KILLED, with the reason; their ids."""
    from pipelines.train.tracking import configure, experiment_name

    client = configure(root)
    experiment = client.get_experiment_by_name(experiment_name(task))
    if experiment is None:
        return []
    marked = []
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        owner = _owner(run.data.tags)
        if owner is None or owner.alive():
            continue
        client.set_tag(run.info.run_id, KILLED_REASON_TAG,
                       f"its process (pid {owner.pid} on {owner.host}) ended without finishing the run: killed or "
                       f"crashed; marked KILLED at {now} by the next retrain (pid {os.getpid()})")
        client.set_terminated(run.info.run_id, status="KILLED")
        marked.append(run.info.run_id)
    return marked


# --- DVC files a kill left half-written -----------------------------------------------------------

def _dvc_load_error(path: Path, schema: Any) -> str | None:
    """Why DVC cannot load `path` against `schema` (its own loader and schema), or None when it can."""
    from dvc.exceptions import DvcException
    from dvc.utils.strictyaml import load

    try:
        load(str(path), schema)
    except DvcException as e:
        return str(e).splitlines()[0]
    return None


def _incomplete_outs(path: Path) -> str | None:
    """What a .dvc file that DVC's lenient schema accepts lacks to name its data (a cut can end mid-entry)."""
    import yaml

    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    if not outs or any(not isinstance(out, dict) or not {"path", "md5"} <= set(out) for out in outs):
        return "an output without its path or md5"
    return None


def repair_dvc_files(root: Path) -> list[str]:
    """Put back the DVC files a kill -9 left half-written; what was done.

    DVC rewrites dvc.lock and data.dvc in place, so a kill in the middle leaves a file it refuses to load
    (truncated YAML, or valid YAML its schema rejects) and every later run stops on it. dvc.lock is moved to
    SEQOPS_HOME/recovered/ (it is not versioned): DVC then finds the stages it recorded not run and runs them
    again. data.dvc is versioned: its last commit is checked out, and the next version step re-adds data/.
    Checked under DVC's workspace lock, so a file a live DVC process is writing is never taken for debris
    (a held lock: nothing is touched).
    """
    from dvc.lock import LockError, make_lock

    tmp = root / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with make_lock(str(tmp / "lock"), tmp_dir=str(tmp)):
            return _repair_dvc_files(root)
    except LockError:
        return []


def _repair_dvc_files(root: Path) -> list[str]:
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA, COMPILED_SINGLE_STAGE_SCHEMA

    done = []
    lock = root / "dvc.lock"
    if lock.is_file() and (why := _dvc_load_error(lock, COMPILED_LOCKFILE_SCHEMA)):
        kept = seqops_home(root) / "recovered" / f"dvc.lock.{datetime.now():%Y%m%d-%H%M%S}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(lock, kept)
        done.append(f"set aside an unreadable dvc.lock ({why}) as {kept}: its stages run again")
    data = root / "data.dvc"
    if data.is_file() and (why := _dvc_load_error(data, COMPILED_SINGLE_STAGE_SCHEMA) or _incomplete_outs(data)):
        restored = subprocess.run(["git", "checkout", "HEAD", "--", "data.dvc"], cwd=root, capture_output=True,
                                  text=True)
        if restored.returncode == 0:
            done.append(f"restored data.dvc from the last commit: the file was unreadable ({why})")
    return done


# --- on start ------------------------------------------------------------------------------------

def recover(root: Path) -> list[str]:
    """Before a retrain touches anything: stop orphaned servers, clear stale DVC locks, put back DVC files a
    kill left half-written; what was done."""
    done = [f"stopped {what}, left by a killed run" for what in reap_orphans(seqops_home(root))]
    done += [f"removed {what}" for what in clear_stale_dvc_locks(root)]
    done += repair_dvc_files(root)
    return done
