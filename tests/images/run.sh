#!/usr/bin/env bash
# The images, proven: both built with buildah from the real Dockerfiles, then each binary
# run from its image's root filesystem as OpenShift runs it (an arbitrary UID in group 0,
# the root filesystem read-only): --help, --check, and a real run against a PostgreSQL
# cluster and two S3 servers (s3s-fs) started here on loopback. Prints the images' sizes.
#
# No registry is reachable here, so the Dockerfiles' base images (build arguments) are
# local stand-ins: for the build stage a minimal Debian 12 (debootstrap) with gcc and this
# machine's Rust toolchain and crate cache; for the run stage only glibc, libgcc and the
# CA certificates, as in distroless/cc. Run as root (buildah, debootstrap, chroot).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=$(mktemp -d /tmp/egress-images.XXXXXX)
chmod 755 "$WORK"
PGBIN=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
S3S_FS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
# The Debian mirror apt uses here (CI machines reach only the package registries).
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's|^URIs: *\(http[^ ]*/debian\)$|\1|p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# The cargo profile the images are built with: `release` (the default) is what ships and
# takes ~13 min here; the test command passes `image-test` (no optimisation) to prove the
# same steps in a fraction of that.
PROFILE=${IMAGES_PROFILE:-release}
BUILD_BASE=localhost/egress-stand-in-build:bookworm
RUN_BASE=localhost/egress-stand-in-run:bookworm
PIDS=()
MOUNTED=()
source "$ROOT/scripts/loopback-s3.sh"

log() { printf '[images] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${PGDATA:-}" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  for c in "${MOUNTED[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- stand-in base images ------------------------------------------------------------------
build_base() { # (run_base takes its libraries from the root built here: both or neither)
  buildah inspect --type image "$BUILD_BASE" >/dev/null 2>&1 \
    && buildah inspect --type image "$RUN_BASE" >/dev/null 2>&1 && return
  log "debootstrap: a minimal Debian 12 with gcc for the build stage"
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates bookworm "$WORK/build-root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
  # This machine's toolchain (without its 800 MB of docs), and its crate cache (the
  # build needs no network).
  local sysroot; sysroot=$(rustc --print sysroot)
  mkdir -p "$WORK/build-root/usr/local/rust" "$WORK/build-root/usr/local/cargo"
  tar -C "$sysroot" --exclude=./share -cf - . | tar -C "$WORK/build-root/usr/local/rust" -xf -
  for tool in cargo rustc; do ln -sf "/usr/local/rust/bin/$tool" "$WORK/build-root/usr/local/bin/$tool"; done
  cp -a "${CARGO_HOME:-$HOME/.cargo}/registry" "$WORK/build-root/usr/local/cargo/"
  local c; c=$(buildah from scratch)
  cp -a "$WORK/build-root/." "$(buildah mount "$c")/"
  buildah config --env CARGO_HOME=/usr/local/cargo --env CARGO_NET_OFFLINE=true \
    --env PATH=/usr/local/bin:/usr/bin:/bin "$c"
  buildah commit --rm -q "$c" "$BUILD_BASE" >/dev/null
}

run_base() {
  buildah inspect --type image "$RUN_BASE" >/dev/null 2>&1 && return
  log "the run stage's base: glibc, libgcc, CA certificates, a nonroot user"
  local r=$WORK/run-root src=$WORK/build-root lib=lib/x86_64-linux-gnu
  mkdir -p "$r/$lib" "$r/lib64" "$r/etc/ssl/certs" "$r/usr/local/bin" "$r/tmp" "$r/proc" "$r/dev" "$r/home/nonroot"
  for so in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libnss_files.so.2; do
    [ -e "$src/$lib/$so" ] && cp -L "$src/$lib/$so" "$r/$lib/"
  done
  cp -L "$src/lib64/ld-linux-x86-64.so.2" "$r/lib64/"
  cp -L "$src/etc/ssl/certs/ca-certificates.crt" "$r/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
  chmod 1777 "$r/tmp"
  local c; c=$(buildah from scratch)
  cp -a "$r/." "$(buildah mount "$c")/"
  buildah commit --rm -q "$c" "$RUN_BASE" >/dev/null
}

# --- the images, from the real Dockerfiles -------------------------------------------------
build_image() { # NAME: Dockerfile.NAME -> localhost/egress-NAME:test
  local name=$1 started; started=$(date +%s)
  # IMAGES_REUSE=1: keep images an earlier run built (while working on the checks below).
  if [ "${IMAGES_REUSE:-0}" = 1 ] && buildah inspect --type image "localhost/egress-$name:test" >/dev/null 2>&1; then
    log "egress-$name: reusing the image an earlier run built"; return
  fi
  log "building egress-$name from Dockerfile.$name (cargo profile $PROFILE)"
  buildah build --isolation chroot --layers -q -f "$WORK/context/Dockerfile.$name" \
    --build-arg "BUILD_BASE=$BUILD_BASE" --build-arg "RUN_BASE=$RUN_BASE" --build-arg "PROFILE=$PROFILE" \
    -t "localhost/egress-$name:test" "$WORK/context" >"$WORK/build-$name.log" 2>&1 \
    || { tail -30 "$WORK/build-$name.log" >&2; fail "buildah build Dockerfile.$name"; }
  log "egress-$name built in $(( $(date +%s) - started ))s"
}

# The tracked files, as a clean clone has them (the build context holds nothing else).
mkdir -p "$WORK/context"
git ls-files -z | xargs -0 tar -cf - | tar -xf - -C "$WORK/context"
build_base
run_base
# Both Dockerfiles share their build stage word for word: buildah's layer cache compiles
# the workspace once, for the first image; the second reuses it.
build_image dump
build_image sync
# The cached build stage (GBs) has served; images other runs left dangling go with it.
buildah rmi --prune >/dev/null 2>&1 || true

# --- run them as OpenShift does ---------------------------------------------------------
# in_image NAME [VAR=value...] -- COMMAND...: COMMAND in the image's root filesystem,
# mounted read-only, as UID 1000680000 in group 0 (as OpenShift's restricted SCC runs it),
# with only the variables given.
in_image() {
  local name=$1; shift
  local c mnt; c=$(buildah from -q "localhost/egress-$name:test"); MOUNTED+=("$c")
  mnt=$(buildah mount "$c")
  unshare --mount --propagation private -- bash -c '
    set -e; mnt=$1; shift
    envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
    mount --bind "$mnt" "$mnt"; mount -o remount,bind,ro "$mnt"
    mount -t proc proc "$mnt/proc"; mount --bind /dev "$mnt/dev"
    exec env -i "${envs[@]}" "$(command -v chroot)" --userspec=1000680000:0 "$mnt" "$@"' _ "$mnt" "$@"
}

PGPORT=$(free_port)
PGDATA=$WORK/pg
mkdir -p "$PGDATA"; chown postgres "$PGDATA"
echo images-pw >"$WORK/pgpass"; chown postgres "$WORK/pgpass"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=md5 --pwfile="$WORK/pgpass" --no-sync -E UTF8 --locale=C >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w start \
  -o "-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1 -c fsync=off" >/dev/null
PGPASSWORD=images-pw psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c \
  "CREATE TABLE orders AS SELECT i AS id, md5(i::text) AS note FROM generate_series(1, 50000) i"
start_s3 A; start_s3 B
mkdir -p "$WORK/A/bucket" "$WORK/B/bucket"   # s3s-fs: a bucket is a directory
DUMP_ENV=(PGHOST=127.0.0.1 PGPORT="$PGPORT" PGUSER=postgres PGPASSWORD=images-pw PGDATABASE=postgres
  PGSSLMODE=disable AWS_ACCESS_KEY_ID=AKA AWS_SECRET_ACCESS_KEY=SKA AWS_ENDPOINT_URL="$A_URL" AWS_REGION=us-east-1
  TABLES=orders S3_OUTPUT=s3://bucket/app DUMP_DATE=2024-01-01 PROGRESS=never TERMINATION_LOG=/dev/null)
SYNC_ENV=(INPUT_URL="$A_URL" INPUT_PATH=bucket/app INPUT_ACCESS_KEY_ID=AKA INPUT_SECRET_ACCESS_KEY=SKA
  OUTPUT_URL="$B_URL" OUTPUT_PATH=bucket/mirror OUTPUT_ACCESS_KEY_ID=AKB OUTPUT_SECRET_ACCESS_KEY=SKB
  REQUIRE_MANIFEST=true PROGRESS=never TERMINATION_LOG=/dev/null)

check() { # WHAT COMMAND...: run, show the last line, fail on a non-zero exit
  local what=$1; shift
  "$@" >"$WORK/out.log" 2>&1 || { cat "$WORK/out.log" >&2; fail "$what"; }
  log "$what: $(tail -n 1 "$WORK/out.log")"
}
check "egress-dump --help" in_image dump -- /usr/local/bin/egress-dump --help
check "egress-sync --help" in_image sync -- /usr/local/bin/egress-sync --help
check "egress-dump --check" in_image dump "${DUMP_ENV[@]}" -- /usr/local/bin/egress-dump --check
check "egress-dump (a day)" in_image dump "${DUMP_ENV[@]}" -- /usr/local/bin/egress-dump
check "egress-sync --check" in_image sync "${SYNC_ENV[@]}" -- /usr/local/bin/egress-sync --check
check "egress-sync (the mirror)" in_image sync "${SYNC_ENV[@]}" -- /usr/local/bin/egress-sync
check "egress-sync --verify output" in_image sync "${SYNC_ENV[@]}" -- /usr/local/bin/egress-sync --verify output
# The root filesystem is read-only: a local output inside it is refused in one line (exit 2).
if in_image dump "${DUMP_ENV[@]}" -- /usr/local/bin/egress-dump --output /home/nonroot/out >"$WORK/out.log" 2>&1; then
  fail "a write into the read-only root filesystem succeeded"
fi
log "a local output in the image's root: $(grep -m1 'egress-dump: error' "$WORK/out.log")"
[ -s "$WORK/B/bucket/mirror/2024-01-01/orders.csv.gz" ] || fail "the mirror holds no orders.csv.gz"
[ -s "$WORK/B/bucket/mirror/2024-01-01/_manifest.json" ] || fail "the mirror holds no manifest"
rows=$(gzip -dc "$WORK/B/bucket/mirror/2024-01-01/orders.csv.gz" | wc -l)
[ "$rows" = 50000 ] || fail "the mirrored day has $rows rows, not 50000"

log "image sizes:"
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E 'egress-(dump|sync):test|stand-in' >&2
log "both images build, and run read-only as an arbitrary UID in group 0"
