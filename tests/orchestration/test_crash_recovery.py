"""After a crash: a `kill -9` at any moment leaves nothing the next run cannot clear by itself.

Real processes and real SIGKILL throughout: dead holders are processes that were started and
killed, live ones are processes that still run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import yaml

from pipelines.orchestration.recovery import (
    KILLED_REASON_TAG,
    RetrainBusy,
    SlotHolders,
    clear_stale_dvc_locks,
    mark_killed_runs,
    owner_tags,
    recover,
)
from pipelines.processes import (
    Guarded,
    Holder,
    group_members,
    raise_if_interrupted,
    reap_orphans,
    remember_interrupts,
)
from tests.conftest import TINY_FORECAST, git, make_project
from tests.orchestration.conftest import BIN, free_port, port_open

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# A command whose child leaves the process group: the guard must still stop it.
SPAWNS_ESCAPEE = [sys.executable, "-c", "import subprocess, time; "
                  "subprocess.Popen(['sleep', '600'], start_new_session=True); time.sleep(600)"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; every one still alive at the end is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def dead_holder(processes: list[subprocess.Popen]) -> Holder:
    """The identity of a process that was running and has since been SIGKILLed."""
    process = subprocess.Popen(SLEEPER)
    processes.append(process)
    holder = Holder.of(process.pid)
    process.kill()
    process.wait()
    assert holder is not None and not holder.alive()
    return holder


def live_holder(processes: list[subprocess.Popen]) -> Holder:
    process = subprocess.Popen(SLEEPER)
    processes.append(process)
    holder = Holder.of(process.pid)
    assert holder is not None and holder.alive()
    return holder


def record(holders: SlotHolders, holder: Holder, holding: bool = True) -> None:
    path = holders.folder / f"{holder.pid}-test.json"
    path.write_text(json.dumps({"holder": holder.as_dict(), "granted": time.time() - 60 if holding else None}))


def gone(pids: list[psutil.Process], timeout: float = 30.0) -> bool:
    _, alive = psutil.wait_procs(pids, timeout=timeout)
    return not alive


# --- holders --------------------------------------------------------------------------------------

def test_a_reused_pid_is_not_the_recorded_holder(processes: list[subprocess.Popen]) -> None:
    holder = live_holder(processes)
    impostor = Holder(holder.pid, holder.started - 3600, holder.host)  # same pid, started an hour earlier
    assert holder.alive() and not impostor.alive()


def test_slot_holders_release_only_dead_holders(tmp_path: Path, processes: list[subprocess.Popen]) -> None:
    holders = SlotHolders("retrain-demo", tmp_path)
    live = live_holder(processes)
    record(holders, dead_holder(processes), holding=True)
    record(holders, dead_holder(processes), holding=False)  # killed while still waiting: it held nothing
    record(holders, live)
    released: list[int] = []

    assert holders.reclaim(lambda slots, seconds: released.append(slots)) == [live]
    assert released == [1]
    assert [h for _, h, _ in holders.records()] == [live]


def test_a_slot_held_by_a_killed_run_is_released(prefect_harness, tmp_path: Path,
                                                 processes: list[subprocess.Popen]) -> None:
    from prefect import get_client

    from pipelines.orchestration.policy import limit_name, one_retrain_at_a_time

    name = limit_name("crashed")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
        client.increment_concurrency_slots([name], 1, "concurrency")  # what the killed run held
    record(SlotHolders(name, tmp_path), dead_holder(processes))

    started = time.monotonic()
    with one_retrain_at_a_time("crashed", 1, tmp_path, wait_s=10):
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
    assert time.monotonic() - started < 10
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0


def test_a_live_holder_is_named_and_the_wait_is_bounded(prefect_harness, tmp_path: Path,
                                                        processes: list[subprocess.Popen]) -> None:
    from prefect import get_client

    from pipelines.orchestration.policy import limit_name, one_retrain_at_a_time

    name = limit_name("busy")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
        client.increment_concurrency_slots([name], 1, "concurrency")
    live = live_holder(processes)
    record(SlotHolders(name, tmp_path), live)

    started = time.monotonic()
    with pytest.raises(RetrainBusy, match=f"still held after 3s by another retrain: pid {live.pid}"):
        with one_retrain_at_a_time("busy", 1, tmp_path, wait_s=3):
            pass
    assert time.monotonic() - started < 20
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 1  # still the live one's


# --- DVC locks ------------------------------------------------------------------------------------

def test_rwlock_entries_of_dead_or_reused_pids_are_removed(tmp_path: Path, processes: list[subprocess.Popen]) -> None:
    tmp = tmp_path / ".dvc" / "tmp"
    tmp.mkdir(parents=True)
    dead = dead_holder(processes)
    written = time.time()
    # Past recovery's 1 s tolerance by more than the error of a process's start time (psutil derives it
    # from the boot time, which /proc/stat gives in whole seconds): 1.5 s failed now and then.
    time.sleep(2.5)
    reused = live_holder(processes)  # started after the lock was written: its pid was reused
    rwlock = tmp / "rwlock"
    rwlock.write_text(json.dumps({
        "read": {str(tmp_path / "data"): [{"pid": dead.pid, "cmd": "dvc repro"}, {"pid": os.getpid(), "cmd": "me"}]},
        "write": {str(tmp_path / "prepared"): {"pid": reused.pid, "cmd": "dvc commit"}},
    }))
    os.utime(rwlock, (written, written))

    removed = clear_stale_dvc_locks(tmp_path)

    assert len(removed) == 2
    left = json.loads(rwlock.read_text())
    assert left["read"] == {str(tmp_path / "data"): [{"pid": os.getpid(), "cmd": "me"}]} and left["write"] == {}


LOCK = {"schema": "2.0", "stages": {"prepare@forecast": {
    "cmd": "python -m pipelines.prepare forecast",
    "deps": [{"path": "data/forecast/raw.parquet", "hash": "md5", "md5": "9a1b91983c8bea994be96ba93363c741", "size": 9}],
    "outs": [{"path": "prepared/forecast", "hash": "md5", "md5": "1b2c.dir", "size": 5, "nfiles": 2}]}}}
DATA_DVC = {"outs": [{"md5": "6891034bb5b5a2917713acf199a81e7c.dir", "size": 29247, "nfiles": 1, "hash": "md5",
                      "path": "data"}]}


def test_a_dvc_lock_cut_short_by_a_kill_is_set_aside_and_a_whole_one_is_kept(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    whole = yaml.safe_dump(LOCK, sort_keys=False)
    lock.write_text(whole)
    assert recover(tmp_path) == [] and lock.read_text() == whole

    lock.write_text(whole[: whole.index("outs:") + 12])  # DVC rewrites it in place: killed mid-write
    done = recover(tmp_path)

    assert len(done) == 1 and "set aside an unreadable dvc.lock" in done[0], done
    assert not lock.exists()
    kept = list((tmp_path / ".seqops" / "recovered").glob("dvc.lock.*"))
    assert len(kept) == 1 and kept[0].read_text() == whole[: whole.index("outs:") + 12]


def test_a_data_dvc_cut_short_by_a_kill_is_restored_from_its_last_commit(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "data.dvc").write_text(yaml.safe_dump(DATA_DVC))
    git(tmp_path, "add", "data.dvc")
    git(tmp_path, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "data")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 6891034bb5b5")

    done = recover(tmp_path)

    assert len(done) == 1 and done[0].startswith("restored data.dvc from the last commit"), done
    assert yaml.safe_load((tmp_path / "data.dvc").read_text()) == DATA_DVC


def test_dvc_workspace_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    from dvc.lock import make_lock

    lockfile = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from dvc.lock import make_lock; "
                               f"lock = make_lock({str(lockfile)!r}); lock.lock(); print('locked', flush=True); "
                               "time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match="Unable to acquire lock"):
            make_lock(str(lockfile)).lock()
    finally:
        holder.kill()
        holder.wait()
    lock = make_lock(str(lockfile))
    lock.lock()
    lock.unlock()


# --- MLflow runs ----------------------------------------------------------------------------------

class _SwallowsInterrupts:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the handler's KeyboardInterrupt is raised here, where Python drops it


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_ctrl_c_that_python_swallowed_still_stops_the_run_at_the_next_stage() -> None:
    """A KeyboardInterrupt raised in a __del__ or weakref callback is printed and dropped: a Ctrl-C at that
    instant between stages was lost, and the run promoted. It is remembered until the block ends."""
    with remember_interrupts():
        raise_if_interrupted()  # nothing yet
        _SwallowsInterrupts()  # collected at once; its Ctrl-C is "Exception ignored in ..."
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    raise_if_interrupted()  # forgotten with the block: the next run starts clean


def test_runs_of_a_dead_process_are_marked_killed_with_the_reason(project: Path,
                                                                  processes: list[subprocess.Popen]) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.orchestration.recovery import OWNER_TAG
    from pipelines.train.tracking import configure, ensure_experiment

    client: MlflowClient = configure(project)
    experiment = ensure_experiment("forecast", project)
    dead = dead_holder(processes)
    orphan = client.create_run(experiment, tags={OWNER_TAG: f"{dead.pid}@{dead.host}@{dead.started!r}"})
    ours = client.create_run(experiment, tags=owner_tags())
    foreign = client.create_run(experiment)  # not started by seqops: left alone

    assert mark_killed_runs(project, "forecast") == [orphan.info.run_id]
    killed = client.get_run(orphan.info.run_id)
    assert killed.info.status == "KILLED" and f"pid {dead.pid}" in killed.data.tags[KILLED_REASON_TAG]
    assert client.get_run(ours.info.run_id).info.status == "RUNNING"
    assert client.get_run(foreign.info.run_id).info.status == "RUNNING"


# --- server processes -----------------------------------------------------------------------------

def test_a_guarded_server_dies_with_its_killed_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from pipelines.processes import Guarded; "
                               f"g = Guarded({SPAWNS_ESCAPEE!r}, Path({str(tmp_path)!r}), 'demo'); "
                               "print(g.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        guard = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while len(group_members(guard)) < 3 and time.monotonic() < deadline:  # guard, command, escapee
            time.sleep(0.2)
        members = group_members(guard)
        assert len(members) == 3
    finally:
        parent.kill()
        parent.wait()
    assert gone(members)


def write_pid_record(home: Path, label: str, owner: Holder, leader: Holder) -> None:
    (home / "pids").mkdir(exist_ok=True)
    (home / "pids" / f"{label}-{leader.pid}.json").write_text(json.dumps({
        "label": label, "owner": owner.as_dict(), "leader": leader.as_dict(), "command": SLEEPER}))


def test_orphaned_servers_of_a_dead_owner_are_stopped_on_start(tmp_path: Path,
                                                               processes: list[subprocess.Popen]) -> None:
    orphan = subprocess.Popen([sys.executable, "-m", "pipelines.processes", str(os.getpid()), "--", *SLEEPER],
                              start_new_session=True)  # a guard that missed its owner's death
    processes.append(orphan)
    time.sleep(1.0)
    write_pid_record(tmp_path, "demo", dead_holder(processes), Holder.of(orphan.pid))
    stranger = live_holder(processes)  # a pid file naming a process that is not a guard: never killed
    write_pid_record(tmp_path, "stale", dead_holder(processes), stranger)

    assert reap_orphans(tmp_path) == [f"demo (process group {orphan.pid})"]  # Guarded() calls it first
    assert orphan.wait(timeout=15) is not None
    assert stranger.alive()
    kept = Guarded(SLEEPER, tmp_path, "kept")
    try:
        assert reap_orphans(tmp_path) == []  # ours: its owner, this process, lives
        assert kept.process.poll() is None and kept.record.exists()
    finally:
        kept.stop()
    assert not list((tmp_path / "pids").iterdir())


def cli_env(root: Path) -> dict[str, str]:
    return {**os.environ, "SEQOPS_ROOT": str(root), "PREFECT_HOME": str(root / ".seqops" / "prefect"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / '.seqops' / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_stops_seqops_ui_and_every_process_it_started(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", {"forecast": TINY_FORECAST})
    port = free_port()
    ui = subprocess.Popen([str(BIN / "seqops"), "ui", "--port", str(port)], cwd=root, env=cli_env(root),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert ui.poll() is None and time.monotonic() < deadline, "seqops ui did not open its port"
            time.sleep(0.5)
        children = descendants(ui.pid)
        assert len(children) >= 2  # the guard, mlflow, its server ...
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
    assert gone(children), [p.cmdline() for p in children if p.is_running()]
    assert not port_open(port)


# --- kill -9 of a whole retrain, at each stage ----------------------------------------------------

def running_mlflow_run(root: Path) -> bool:
    try:
        with sqlite3.connect(root / ".seqops" / "mlflow.db", timeout=1) as db:
            return bool(db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0])
    except sqlite3.Error:  # not created yet, or busy
        return False


KILL_POINTS = {  # when the run is past that point: a file a stage wrote, or a training run open
    "ingest": lambda root: (root / "data" / "forecast" / "raw.parquet").exists(),
    "prepare": lambda root: (root / "prepared" / "forecast").exists(),
    "train": running_mlflow_run,
    "evaluate": lambda root: (root / "artifacts" / "forecast" / "train.json").exists(),
    "promote": lambda root: (root / "metrics" / "forecast.json").exists(),
}
RUN_BOUND_S = 540  # a whole tiny run, on 2 cores shared with other work


def run_command(root: Path) -> list[str]:
    return [str(BIN / "seqops"), "run", "--task", "forecast", "--no-serve-check"]


def our_processes(root: Path) -> list[psutil.Process]:
    """Processes whose environment points at this project: what a run started and may have left."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SEQOPS_ROOT") == str(root) and process.pid != os.getpid():
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_when(point: str, root: Path, env: dict[str, str], log: Path) -> None:
    """Start `seqops run`, wait until it is past `point`, kill -9 it; assert nothing it started survives."""
    with open(log, "wb") as out:
        run = subprocess.Popen(run_command(root), cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + RUN_BOUND_S
    while not KILL_POINTS[point](root):
        assert run.poll() is None, f"the run ended before {point}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the run never reached {point}"
        time.sleep(0.2)
    run.kill()  # kill -9 of `seqops run` itself, as a user would
    run.wait()
    left = our_processes(root)
    assert gone(left, timeout=60), f"left running after kill -9 at {point}: {[p.cmdline() for p in left if p.is_running()]}"


@pytest.mark.slow
@pytest.mark.timeout(len(KILL_POINTS) * RUN_BOUND_S + 120)  # ~3 min on 2 idle cores
def test_a_retrain_killed_at_every_stage_in_turn_completes_on_the_next_run(tmp_path: Path) -> None:
    """One project, killed at ingest, then (by the next run) at prepare, train, evaluate and promote.

    Each kill point lies past the stage the previous run was killed in, so every run has to recover from
    the kill before it (stale locks, slots, half-written outputs, RUNNING runs, orphaned servers) and run
    that stage again before it can be killed itself; the last run must then complete with a champion.
    The points are reached in the order of the trip, so no marker of a later point exists before its run.
    """
    from mlflow.tracking import MlflowClient

    root = make_project(tmp_path / "project", {"forecast": TINY_FORECAST})
    env = cli_env(root)
    try:
        for point in KILL_POINTS:
            assert not KILL_POINTS[point](root), f"{point} was reached before its run started"
            kill_when(point, root, env, tmp_path / f"killed-at-{point}.log")
        started = time.monotonic()
        last = subprocess.run(run_command(root), cwd=root, env=env, capture_output=True, text=True,
                              timeout=RUN_BOUND_S)
        assert last.returncode == 0, (last.stdout + last.stderr)[-4000:]
        assert time.monotonic() - started < RUN_BOUND_S
    finally:
        for process in our_processes(root):
            process.kill()

    client = MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    assert "champion" in client.get_registered_model("seqops-forecast").aliases, last.stdout[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("seqops-forecast").experiment_id])
    assert not [run for run in runs if run.info.status == "RUNNING"]
    killed = [run for run in runs if run.info.status == "KILLED"]
    assert all(KILLED_REASON_TAG in run.data.tags for run in killed)
    assert killed, "the retrain killed in training left no run marked KILLED"
    assert not list((root / ".seqops" / "pids").glob("*.json"))
    assert not our_processes(root)
