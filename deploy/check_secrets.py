"""Refuse empty or placeholder secrets: run by compose's one-shot `secrets-check` (every service waits for
it) on /run/secrets, and on the host on .env before `docker compose up`.

    python deploy/check_secrets.py /run/secrets        every file in the directory
    python deploy/check_secrets.py --env-file .env     every secret-named variable of the file

Exits 1 naming each bad secret and the command that makes a real one (.env.example has them all).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|API_KEY|_KEY$", re.IGNORECASE)
PLACEHOLDER = re.compile(r"^(change[-_ ]?me|changeme|replace[-_ ]?me|todo|xxx+|secret|password|<.*>)", re.IGNORECASE)
NOT_SECRET = re.compile(r"ACCESS_KEY$")  # S3 access key ids name an identity; their secret keys are checked
MIN_LENGTH = 16


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


def directory_secrets(path: Path) -> dict[str, str]:
    return {item.name: item.read_text(errors="replace") for item in sorted(path.iterdir()) if item.is_file()}


def check(secrets: dict[str, str], where: str) -> list[str]:
    return [f"{where}: {name} {why}: set it with the command .env.example gives for it"
            for name, value in secrets.items() if (why := problem(value))]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--env-file"] and len(argv) == 2:
        errors = check(env_file_secrets(Path(argv[1])), argv[1])
    elif len(argv) == 1:
        errors = check(directory_secrets(Path(argv[0])), argv[0])
    else:
        raise SystemExit("usage: check_secrets.py DIRECTORY | --env-file FILE")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
