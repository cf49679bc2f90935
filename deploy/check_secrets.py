"""Refuse empty, placeholder or unreadable secrets: run by compose's one-shot `secrets-check` (every service
waits for it) on /run/secrets, and on the host on .env before `docker compose up`.

    python deploy/check_secrets.py /run/secrets        every file in the directory
    python deploy/check_secrets.py --env-file .env     every secret-named variable of the file, and the
                                                       owner of every key file under secrets/ beside it

Compose mounts a file secret (`file: ./secrets/...`) as it is on the host, owner and mode kept (outside
Swarm it ignores uid/gid/mode), so a key written 0600 by the host user cannot be read by the containers'
user: each such file must belong to IMAGE_UID (`sudo chown -R 10001:10001 secrets`), which keeps it private.
Exits 1 naming each bad secret and what to do (.env.example has the command that makes each one).
"""

from __future__ import annotations

import re
import stat
import sys
from pathlib import Path

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|API_KEY|_KEY$", re.IGNORECASE)
PLACEHOLDER = re.compile(r"^(change[-_ ]?me|changeme|replace[-_ ]?me|todo|xxx+|secret|password|<.*>)", re.IGNORECASE)
NOT_SECRET = re.compile(r"ACCESS_KEY$")  # S3 access key ids name an identity; their secret keys are checked
MIN_LENGTH = 16
IMAGE_UID = 10001  # the user the project image runs as (Dockerfile, compose `user:`)


def problem(value: str) -> str | None:
    """Why `value` is not a usable secret, or None."""
    value = value.strip()
    if not value:
        return "is empty"
    if PLACEHOLDER.match(value):
        return f"is a placeholder ({value[:12]}...)"
    if len(value) < MIN_LENGTH and "BEGIN" not in value:
        return f"is shorter than {MIN_LENGTH} characters"
    return None


def env_file_secrets(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#") and SECRET_NAME.search(key) and not NOT_SECRET.search(key):
            values[key.strip()] = value.strip().strip("'\"")
    return values


def directory_secrets(path: Path) -> tuple[dict[str, str], list[str]]:
    """The secrets of a directory, and an error for each file this process may not read."""
    values, errors = {}, []
    for item in sorted(path.iterdir()):
        if item.is_file():
            try:
                values[item.name] = item.read_text(errors="replace")
            except PermissionError:
                errors.append(f"{path}: {item.name} cannot be read by this container's user: on the host, "
                              f"`sudo chown -R {IMAGE_UID}:{IMAGE_UID} secrets` (the files stay private to it)")
    return values, errors


def unreadable_key_files(folder: Path) -> list[str]:
    """Key files under `folder` (the host's secrets/) the containers' user could not read once mounted."""
    errors = []
    for item in sorted(p for p in folder.rglob("*") if p.is_file()):
        info = item.stat()
        if info.st_uid != IMAGE_UID and not info.st_mode & stat.S_IROTH:
            errors.append(f"{item}: owned by uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}: compose mounts "
                          f"it as it is and the containers run as uid {IMAGE_UID}, who could not read it; "
                          f"`sudo chown -R {IMAGE_UID}:{IMAGE_UID} {folder}`")
    return errors


def check(secrets: dict[str, str], where: str) -> list[str]:
    return [f"{where}: {name} {why}: set it with the command .env.example gives for it"
            for name, value in secrets.items() if (why := problem(value))]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--env-file"] and len(argv) == 2:
        errors = check(env_file_secrets(Path(argv[1])), argv[1])
        errors += unreadable_key_files(Path(argv[1]).resolve().parent / "secrets")
    elif len(argv) == 1:
        values, errors = directory_secrets(Path(argv[0]))
        errors += check(values, argv[0])
    else:
        raise SystemExit("usage: check_secrets.py DIRECTORY | --env-file FILE")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
