#!/bin/sh
# SeaweedFS in one process (master + volume + filer + S3 gateway) for docker-compose.yml.
# The S3 gateway accepts one identity, built here from S3_ACCESS_KEY / S3_SECRET_KEY so the keys
# live only in the environment and in a file inside the container, never in the repository.
set -eu

: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set: copy .env.example to .env and fill it in}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set: copy .env.example to .env and fill it in}"
case "$S3_ACCESS_KEY$S3_SECRET_KEY" in
    *'"'* | *'\'*)
        echo "seaweedfs: S3_ACCESS_KEY / S3_SECRET_KEY must not contain double quotes or backslashes" >&2
        exit 1
        ;;
esac

config="${SEAWEEDFS_S3_CONFIG:-/etc/seaweedfs/s3.json}"
mkdir -p "$(dirname "$config")"
umask 077
cat >"$config" <<EOF
{
  "identities": [
    {
      "name": "seqops",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF

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
