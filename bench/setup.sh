#!/usr/bin/env bash
# What bench/run.sh needs beyond the test dependencies (scripts/install-test-deps.sh, which
# provides PostgreSQL, s3s-fs, Ceph RGW and the AWS CLI): rclone, GNU time, bc, boto3.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
missing=()
for tool in rclone bc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q boto3
# DuckDB's postgres scanner, beside egress-dump in the Parquet part (the test venv holds only
# the extensions the tests read with).
/opt/egress-py/bin/python -c 'import duckdb' 2>/dev/null \
  && { test -f /opt/egress-py/lib/python3.11/site-packages/duckdb_ext/extensions/v1.4.4/linux_amd64/postgres_scanner.duckdb_extension \
       || /opt/egress-py/bin/pip install -q "duckdb-ext-postgres==1.4.4.20260205"; }
echo "[bench] ready: $(rclone version | head -1)"
