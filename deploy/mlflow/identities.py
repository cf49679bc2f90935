"""Create the MLflow identities of the scaled setup through the basic-auth app's REST API; safe to rerun.

    python deploy/mlflow/identities.py USER=SECRET_FILE [USER=SECRET_FILE ...]

MLFLOW_TRACKING_URI names the server; the admin signs in as MLFLOW_ADMIN_USER (default admin)
with the password in $SECRETS_DIR/mlflow_admin_password. Each USER is created with the password
in SECRET_FILE (relative to SECRETS_DIR, default /run/secrets); a user that exists is left as is.
What a non-admin may do is set by the server (deploy/mlflow/start.sh): read everything, write only
what it created. Standard library only: it runs in the mlflow image.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CREATE = "/api/2.0/mlflow/users/create"


def secret(name: str) -> str:
    path = Path(os.environ.get("SECRETS_DIR", "/run/secrets")) / name
    value = path.read_text().strip()
    if not value:
        raise SystemExit(f"error: {path} is empty: see .env.example")
    return value


def create_user(base_url: str, admin: tuple[str, str], username: str, password: str) -> bool:
    """Create `username`; False when it already exists."""
    token = base64.b64encode(f"{admin[0]}:{admin[1]}".encode()).decode()
    request = urllib.request.Request(f"{base_url.rstrip('/')}{CREATE}", method="POST",
                                     data=json.dumps({"username": username, "password": password}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30):
            return True
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        if "RESOURCE_ALREADY_EXISTS" in body or "already exists" in body:
            return False
        raise SystemExit(f"error: creating MLflow user {username!r} answered {e.code}: {body[:300]}") from None


def main(argv: list[str], deadline_s: float = 120.0) -> None:
    if not argv or any("=" not in arg for arg in argv):
        raise SystemExit("usage: identities.py USER=SECRET_FILE [USER=SECRET_FILE ...]")
    base_url = os.environ["MLFLOW_TRACKING_URI"]
    admin = (os.environ.get("MLFLOW_ADMIN_USER", "admin"), secret("mlflow_admin_password"))
    deadline = time.monotonic() + deadline_s
    for username, _, secret_file in (arg.partition("=") for arg in argv):
        while True:
            try:
                created = create_user(base_url, admin, username, secret(secret_file))
                break
            except urllib.error.URLError as e:  # the server is still starting
                if time.monotonic() > deadline:
                    raise SystemExit(f"error: MLflow at {base_url} did not answer within {deadline_s:.0f}s: {e}")
                time.sleep(2)
        print(f"mlflow user {username}: {'created' if created else 'already there'}")


if __name__ == "__main__":
    main(sys.argv[1:])
