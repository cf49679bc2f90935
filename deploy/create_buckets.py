"""Create the S3 buckets the scaled setup needs (MLflow artifacts, DVC remote); safe to rerun.

    python deploy/create_buckets.py BUCKET [BUCKET ...]

Endpoint: S3_ENDPOINT_URL (else MLFLOW_S3_ENDPOINT_URL); credentials: the usual AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY. Uses botocore, which the project image already has (through dvc-s3).
Retries while the store is still starting; exits non-zero, naming the bucket, if it cannot finish.
"""

from __future__ import annotations

import os
import sys
import time

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ALREADY_THERE = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


def s3_client(endpoint_url: str | None):
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def ensure_bucket(client, bucket: str) -> bool:
    """Create `bucket` unless it exists; True if this call created it."""
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ALREADY_THERE:
            return False
        raise
    return True


def ensure_buckets(client, buckets: list[str], deadline_s: float = 120.0, pause_s: float = 2.0) -> None:
    deadline = time.monotonic() + deadline_s
    for bucket in buckets:
        while True:
            try:
                created = ensure_bucket(client, bucket)
                print(f"bucket {bucket}: {'created' if created else 'already there'}")
                break
            except (BotoCoreError, ClientError) as e:
                if time.monotonic() > deadline:
                    raise SystemExit(f"error: could not create bucket {bucket!r} within {deadline_s:.0f}s: {e}")
                print(f"bucket {bucket}: store not ready ({e}); retrying", file=sys.stderr)
                time.sleep(pause_s)


def main(argv: list[str]) -> None:
    buckets = [b for arg in argv for b in arg.split()]
    if not buckets:
        raise SystemExit("usage: create_buckets.py BUCKET [BUCKET ...]")
    endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    ensure_buckets(s3_client(endpoint), buckets)


if __name__ == "__main__":
    main(sys.argv[1:])
