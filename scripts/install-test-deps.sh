#!/usr/bin/env bash
# Installs what the test suite needs and a fresh Debian 12 machine lacks. Idempotent:
# anything already present is left alone, so it costs nothing on a prepared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install-test-deps] %s\n' "$*"; }

# Debian packages: PostgreSQL 15 (ephemeral test clusters), Ceph (a real RGW for the
# sync tests), a JRE (checks our gzip with java.util.zip.GZIPInputStream).
packages=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || packages+=(postgresql-15 postgresql-client-15)
command -v radosgw >/dev/null || packages+=(radosgw)
command -v ceph-mon >/dev/null || packages+=(ceph-mon)
command -v ceph-osd >/dev/null || packages+=(ceph-osd)
command -v ceph >/dev/null || packages+=(ceph-common)
command -v java >/dev/null || packages+=(default-jre-headless)
command -v gzip >/dev/null || packages+=(gzip)
command -v socat >/dev/null || packages+=(socat)   # TLS in front of a test S3 server
command -v openssl >/dev/null || packages+=(openssl)
command -v promtool >/dev/null || packages+=(prometheus)   # promtool: checks metrics and alert rules
command -v prometheus-pushgateway >/dev/null || packages+=(prometheus-pushgateway)
command -v faketime >/dev/null || packages+=(faketime)   # a run whose clock is wrong (leases)
command -v buildah >/dev/null || packages+=(buildah)   # tests/images: both images built ...
command -v debootstrap >/dev/null || packages+=(debootstrap)   # ... on local stand-in bases
if [ ${#packages[@]} -gt 0 ]; then
  log "apt-get install ${packages[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
# Only the binaries are wanted: tests start their own Pushgateway on a free port.
for service in prometheus prometheus-pushgateway prometheus-node-exporter; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" 2>/dev/null || true
  fi
done
# The Debian package enables a cluster we do not use; tests start their own.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster 15 main stop 2>/dev/null || true
fi

# s3s-fs: S3 server that checks signatures and checksums (0.14.1 builds with our rustc).
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  log "cargo install s3s-fs@0.14.1"
  cargo install s3s-fs@0.14.1 --locked --features binary --quiet
fi

# moto in server mode (implements ListMultipartUploads), in its own venv.
if [ ! -x /opt/egress-moto/bin/moto_server ]; then
  log "pip install moto[server] into /opt/egress-moto"
  python3 -m venv /opt/egress-moto
  /opt/egress-moto/bin/pip install -q 'moto[server]==5.2.1'
fi

# Offline deployment checks: pytest, PyYAML, kubernetes-validate, hadolint.
if ! { /opt/egress-py/bin/python -c 'import pytest, yaml, kubernetes_validate, jsonschema, pyarrow, duckdb, frictionless, pyiceberg, sqlalchemy, psycopg2' \
       && test -f /opt/egress-py/lib/python3.11/site-packages/duckdb_ext/extensions/v1.4.4/linux_amd64/iceberg.duckdb_extension; } 2>/dev/null \
   || [ ! -x /opt/egress-py/bin/hadolint ]; then
  log "pip install -r tests/deploy/requirements.txt into /opt/egress-py"
  python3 -m venv /opt/egress-py
  /opt/egress-py/bin/pip install -q -r tests/deploy/requirements.txt
fi

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked --quiet
# CI fails on unused dependencies.
if ! command -v cargo-machete >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-machete" ]; then
  log "cargo install cargo-machete"
  cargo install cargo-machete@0.9.2 --locked --quiet
fi
