#!/bin/sh
# SeaweedFS in one process (master + volume + filer + S3 gateway) for docker-compose.yml.
# The S3 gateway knows one identity per client, each allowed only what it needs:
#
#   admin          everything (the one-shot `buckets` service only)
#   mlflow         read/write on MLFLOW_BUCKET (the tracking server proxies every artifact)
#   dvc            read/write on DVC_BUCKET (the Prefect and Dask workers' DVC remote)
#   model-server   read on MLFLOW_BUCKET (model servers)
#
# Access key ids come from S3_<ROLE>_ACCESS_KEY, secret keys from $SECRETS_DIR/s3_<role>_secret_key;
# the config is written inside the container (0600), never into the repository.
set -eu

secrets="${SECRETS_DIR:-/run/secrets}"
mlflow_bucket="${MLFLOW_BUCKET:-seqops-mlflow}"
dvc_bucket="${DVC_BUCKET:-seqops-dvc}"

identity() {  # name, access key id, secret file, actions (JSON list body)
    secret="$(cat "$secrets/$3")"
    : "${2:?the access key of S3 identity $1 is not set: see .env.example}"
    : "${secret:?$secrets/$3 is empty: see .env.example}"
    case "$2$secret" in
        *'"'* | *'\'*)
            echo "seaweedfs: S3 keys of identity $1 must not contain double quotes or backslashes" >&2
            exit 1
            ;;
    esac
    printf '    {"name": "%s", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": [%s]}' \
        "$1" "$2" "$secret" "$4"
}

config="${SEAWEEDFS_S3_CONFIG:-/etc/seaweedfs/s3.json}"
mkdir -p "$(dirname "$config")"
umask 077
{
    echo '{"identities": ['
    identity admin "${S3_ADMIN_ACCESS_KEY:-}" s3_admin_secret_key '"Admin", "Read", "List", "Tagging", "Write"'
    echo ','
    identity mlflow "${S3_MLFLOW_ACCESS_KEY:-}" s3_mlflow_secret_key \
        "\"Read:$mlflow_bucket\", \"List:$mlflow_bucket\", \"Tagging:$mlflow_bucket\", \"Write:$mlflow_bucket\""
    echo ','
    identity dvc "${S3_DVC_ACCESS_KEY:-}" s3_dvc_secret_key \
        "\"Read:$dvc_bucket\", \"List:$dvc_bucket\", \"Tagging:$dvc_bucket\", \"Write:$dvc_bucket\""
    echo ','
    identity model-server "${S3_MODEL_SERVER_ACCESS_KEY:-}" s3_model_server_secret_key \
        "\"Read:$mlflow_bucket\", \"List:$mlflow_bucket\""
    echo ']}'
} >"$config.tmp"
mv "$config.tmp" "$config"

# -ip: the name other components of this one-process cluster advertise (the compose hostname).
exec weed server \
    -dir=/data \
    -ip="${SEAWEEDFS_IP:-seaweedfs}" \
    -ip.bind=0.0.0.0 \
    -volume.max=0 \
    -master.volumeSizeLimitMB="${SEAWEEDFS_VOLUME_SIZE_LIMIT_MB:-1024}" \
    -s3 \
    -s3.port=8333 \
    -s3.config="$config"
