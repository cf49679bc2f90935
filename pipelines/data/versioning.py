"""DVC: version the raw data, push it, run pipeline stages, and say which version a run saw.

A data version is the md5 that data.dvc records for data/ plus the git commit it sits on; that
pair is what lineage needs to restore the exact bytes later (`git checkout <sha> -- data.dvc`,
then `dvc checkout` or `dvc pull`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipelines.errors import SeqopsError

DATA_DVC = "data.dvc"
# DVC holds a repo-wide lock; two operations at once in one workspace fail. Serialise ours.
_DVC_LOCK = threading.RLock()
DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")  # the ones dvc.logger.setup() gives handlers

@dataclass(frozen=True)
class DataVersion:
    md5: str
    git_sha: str
    path: str = "data"

    def as_tags(self) -> dict[str, str]:
        return {"data.md5": self.md5, "data.git_sha": self.git_sha, "data.path": self.path}


class VersioningError(SeqopsError):
    """A DVC operation failed; the message says which and why."""


def _explain(error: BaseException) -> str:
    """DVC wraps the cause ("failed to reproduce X") around the reason; show the whole chain."""
    parts = [str(error)]
    while error.__cause__ is not None:
        error = error.__cause__
        parts.append(str(error))
    return ": ".join(p for p in parts if p)


def _one_copy_of_dvc_logs() -> None:
    """DVC's loggers print through DVC's own stdout handlers (added when dvc is imported) and also
    propagate to the root logger, where a flow run's Prefect console handler printed each line again."""
    for name in DVC_LOGGERS:
        logging.getLogger(name).propagate = False


@contextmanager
def quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """The named loggers print only from `level` up inside the block, as they did after it."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, before in zip(loggers, levels):
            logger.setLevel(before)


@contextmanager
def _repo(root: Path) -> Iterator[Any]:
    """An open DVC repo, entered under the module lock with the process in its root.

    DVC resolves stage names and paths against the process's cwd in places its API does not
    expose, so operations run from inside the repo; the lock keeps that chdir from racing.
    Its git hints ("To track the changes with git, run: ...") are off, as `dvc -q` turns them off:
    seqops commits data.dvc itself (`seqops data add`), and a scheduled run printed them every night.
    """
    from dvc.repo import Repo

    _one_copy_of_dvc_logs()
    with _DVC_LOCK, contextlib.chdir(root):
        try:
            repo = Repo(str(root))
        except Exception as e:  # dvc raises NotDvcRepoError, SCMError, ... with useful text
            raise VersioningError(f"{root} is not a usable DVC repository: {e}") from None
        repo.scm_context.quiet = True
        with repo:
            yield repo


def git_sha(root: Path) -> str:
    """HEAD's sha, or 'unversioned' outside a git checkout (e.g. a container with core.no_scm)."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unversioned"


def uncommitted(root: Path) -> list[str] | None:
    """Tracked files that differ from HEAD (params.yaml edited and not committed, say): what `git_sha` alone
    would misreport as the code a model was trained with. None outside a git checkout."""
    result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return sorted(line[3:] for line in result.stdout.splitlines() if line[3:])


def track(root: Path, target: str = "data") -> DataVersion:
    """`dvc add data`: (re)hash the data folder into data.dvc; a no-op when nothing changed."""
    with _repo(root) as repo:
        repo.add(str(root / target))
    return data_version(root)


def restore(root: Path, target: str = "data") -> bool:
    """`dvc pull` of what data.dvc records, for a workspace that lacks it (a fresh clone, a new worker volume):
    rows added with `seqops data add` live only there, and ingesting the sources instead would version the data
    without them. False, changing nothing, when there is no data.dvc or the remote does not hold it (a fresh
    clone of the embedded setup, whose remote is this machine's .seqops/); files in the workspace that differ
    from the recorded version are never overwritten."""
    if not (root / f"{target}.dvc").is_file():
        return False
    # "missing cache files" is the expected answer of an empty remote: not printed
    with _repo(root) as repo, quiet(*DVC_LOGGERS, level=logging.CRITICAL):
        try:
            repo.pull(targets=[str(root / target)])
        except Exception:  # nothing to pull from, or a local change DVC refuses to overwrite: ingest decides
            return False
    return True


def push(root: Path, remote: str | None = None) -> None:
    """`dvc push` of everything tracked, to the default remote (or `remote`)."""
    with _repo(root) as repo:
        try:
            repo.push(remote=remote)
        except Exception as e:
            raise VersioningError(f"dvc push failed: {_explain(e)}") from None


def data_version(root: Path) -> DataVersion:
    """The version data.dvc currently records."""
    path = root / DATA_DVC
    if not path.is_file():
        raise VersioningError(f"{path} does not exist: run `seqops run` or `dvc add data` first")
    out = yaml.safe_load(path.read_text())["outs"][0]
    return DataVersion(md5=out["md5"], git_sha=git_sha(root), path=out["path"])


def stage_changed(root: Path, stage: str) -> bool:
    """Whether DVC would rerun `stage` (its deps, params or outs changed)."""
    with _repo(root) as repo:
        return bool(repo.status([stage]))


def reproduce(root: Path, stage: str, force: bool = False) -> bool:
    """Run one stage of dvc.yaml (not its upstream ones); True if it ran, False if DVC skipped it."""
    with _repo(root) as repo:
        try:
            ran = repo.reproduce(stage, single_item=True, force=force)
        except Exception as e:
            raise VersioningError(f"stage {stage} failed: {_explain(e)}") from None
    return bool(ran)


def commit_stage(root: Path, stage: str) -> None:
    """`dvc commit STAGE`: record a stage whose outputs the flow produced (the fanned-out train) in dvc.lock.

    DVC still decides staleness: the flow only builds a stage that `stage_changed` reports, and
    after this DVC finds it up to date exactly as if `dvc repro` had run its command.
    """
    with _repo(root) as repo:
        try:
            repo.commit(stage, force=True)
        except Exception as e:
            raise VersioningError(f"dvc commit {stage} failed: {_explain(e)}") from None


# --- remotes ----------------------------------------------------------------------------------------
# The scaled setup's DVC remote is S3-compatible storage, named by the same two variables the
# project image's entrypoint (deploy/entrypoint.sh) reads, so a worker outside a container works too.
REMOTE_URL_ENV = "DVC_REMOTE_URL"
REMOTE_ENDPOINT_ENV = "DVC_S3_ENDPOINT_URL"
OBJECTSTORE = "objectstore"


def default_remote(root: Path) -> tuple[str | None, str | None]:
    """(url, endpointurl) of the workspace's default remote, or (None, None) when there is none."""
    with _repo(root) as repo:
        name = repo.config["core"].get("remote")
        remote = repo.config["remote"].get(name, {}) if name else {}
        return remote.get("url"), remote.get("endpointurl")


def use_remote(root: Path, url: str, endpoint_url: str | None = None, name: str = OBJECTSTORE) -> None:
    """Make `url` (s3://bucket/prefix, a path, ...) the default remote, in .dvc/config.local only.

    The committed .dvc/config keeps the embedded defaults' local remote; credentials stay in the
    environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never on disk.
    """
    with _repo(root) as repo:
        try:
            with repo.config.edit("local") as conf:
                remote: dict[str, Any] = {"url": url}
                if endpoint_url:
                    remote["endpointurl"] = endpoint_url
                conf.setdefault("remote", {})[name] = remote
                conf.setdefault("core", {})["remote"] = name
        except Exception as e:
            raise VersioningError(f"cannot set DVC remote {url!r}: {_explain(e)}") from None


def use_remote_from_env(root: Path) -> str | None:
    """Apply DVC_REMOTE_URL (+ DVC_S3_ENDPOINT_URL, else MLFLOW_S3_ENDPOINT_URL) when set; the remote's url."""
    url = os.environ.get(REMOTE_URL_ENV)
    if not url:
        return None
    endpoint = os.environ.get(REMOTE_ENDPOINT_ENV) or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    if default_remote(root) != (url, endpoint):
        use_remote(root, url, endpoint)
    return url


# --- git --------------------------------------------------------------------------------------------

def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def commit_data_version(root: Path, message: str) -> str | None:
    """Commit data.dvc (and nothing else) in a git checkout; the new commit's sha.

    None when there is nothing to commit: no git checkout, or data.dvc already as committed.
    """
    if _git(root, "rev-parse", "--is-inside-work-tree").returncode != 0:
        return None
    added = _git(root, "add", "--", DATA_DVC)
    if added.returncode != 0:
        raise VersioningError(f"git add {DATA_DVC} failed: {added.stderr.strip()}")
    if _git(root, "diff", "--cached", "--quiet", "--", DATA_DVC).returncode == 0:
        return None
    committed = _git(root, "commit", "-q", "-m", message, "--", DATA_DVC)
    if committed.returncode != 0:
        raise VersioningError(f"git commit of {DATA_DVC} failed: {(committed.stderr or committed.stdout).strip()} "
                              f"(the data is tracked and pushed; commit {DATA_DVC} yourself)")
    return git_sha(root)
