#!/usr/bin/env bash
# Benchmark: egress-dump and egress-sync beside the tools they replace, in one run, on the
# same data, alternating contenders (best of BENCH_ROUNDS rounds). Prints wall time, CPU
# seconds, peak RSS and output size, with the ratios egress/anchor; exits non-zero if any
# produced object is not identical to its source.
#
#   bench/run.sh                                       # ~300 MB table, 2,000 small + 6 x 128 MiB objects
#   BENCH_ROWS=300000 BENCH_BIG=0 BENCH_LARGE_MIB=16 BENCH_ROUNDS=1 bench/run.sh   # quick smoke run
#
# Needs (bench/setup.sh installs them): PostgreSQL 15 server binaries, s3s-fs (release
# build), the AWS CLI, rclone, GNU time, bc, python3 with boto3. Servers listen on 127.0.0.1
# only and are stopped on exit. Run as root (PostgreSQL is started as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything here is plain HTTP on loopback; a CA bundle from the environment only confuses
# rclone (and is not what is being measured).
unset AWS_CA_BUNDLE
ROOT=$PWD
ROWS=${BENCH_ROWS:-1800000}          # ~300 MB of CSV
BIG=${BENCH_BIG:-1}                  # also dump a 4x larger table (peak RSS check)
ROUNDS=${BENCH_ROUNDS:-2}
PARTS=${BENCH_PARTS:-dump,shards,parquet,sync,ceph,listing,many}   # which parts to run
SMALL=${BENCH_SMALL:-2000}
LARGE=${BENCH_LARGE:-6}
LARGE_MIB=${BENCH_LARGE_MIB:-128}
WORK=$(mktemp -d /tmp/egress-bench.XXXXXX)
chmod 755 "$WORK"
PGBIN=$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)
S3S_FS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
RESULTS=$WORK/results.tsv
FAILED=0
PIDS=()

log() { printf '[bench] %s\n' "$*" >&2; }
source "$ROOT/scripts/loopback-s3.sh"   # free_port, start_s3
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${CEPH_DIR:-}" ] && bash "$ROOT/tests/harness/ceph-rgw.sh" stop "$CEPH_DIR" >/dev/null 2>&1 || true
  [ -n "${PGDATA:-}" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

log "building release binaries"
cargo build --release --locked -q -p egress-dump -p egress-sync --bins --example levels
DUMP=$ROOT/target/release/egress-dump
LEVELS=$ROOT/target/release/examples/levels
SYNC=$ROOT/target/release/egress-sync

# --- servers ---------------------------------------------------------------------------
PGPORT=$(free_port); PGDATA=$WORK/pg
mkdir -p "$PGDATA"; chown postgres "$WORK" "$PGDATA"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/pg.log" -w start \
  -o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=256MB" >/dev/null
export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
start_s3 A; start_s3 B
s3a() { AWS_ACCESS_KEY_ID=AKA AWS_SECRET_ACCESS_KEY=SKA aws --endpoint-url "$A_URL" --region us-east-1 "$@"; }
s3b() { AWS_ACCESS_KEY_ID=AKB AWS_SECRET_ACCESS_KEY=SKB aws --endpoint-url "$B_URL" --region us-east-1 "$@"; }

# CPU seconds used so far by the servers (PostgreSQL's backends and both S3 servers): the
# share of the machine a contender leaves to them is part of what bounds it. A backend
# exits with its connection, so its time is read from the postmaster's reaped children
# (fields 16-17); reading only live processes (14-15) reported 0.00 for every dump.
server_cpu() {
  local total=0 pid
  for pid in "${PIDS[@]}" $(pgrep -u postgres -f "postgres" || true); do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# measure GROUP NAME command...: appends "group, name, wall, cpu, peak RSS MiB, server cpu"
# to RESULTS. CPU and RSS cover the command and its children (GNU time); server CPU is
# PostgreSQL's and the S3 servers' CPU during the run.
measure() {
  local group=$1 name=$2; shift 2
  local before; before=$(server_cpu)
  echo "0 0 0 0" >"$WORK/time"
  if ! /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$@" >"$WORK/out.log" 2>&1; then
    log "FAILED: $group / $name"; tail -5 "$WORK/out.log" >&2; FAILED=1
  fi
  read -r wall user sys rss < <(tail -n 1 "$WORK/time")
  local ticks; ticks=$(getconf CLK_TCK)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$group" "$name" "$wall" "$(echo "$user + $sys" | bc)" "$((rss / 1024))" \
    "$(echo "scale=2; ($(server_cpu) - $before) / $ticks" | bc)" >>"$RESULTS"
  log "$group / $name: ${wall}s"
}

touch "$WORK/sizes.tsv" "$RESULTS"
CSV_BYTES=0
# --- dump ------------------------------------------------------------------------------
# The bench table: orders with uuid, text, timestamptz, jsonb, numeric and a quoted note.
bench_table() {
  [ "$(psql -X -At -c "SELECT to_regclass('bench') IS NOT NULL")" = t ] && return
  log "generating $ROWS rows"
  psql -q -X -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE bench AS
SELECT gen_random_uuid() AS id,
       'cust-' || (i % 100000) AS customer_id,
       'ord-' || lpad(i::text, 10, '0') AS order_id,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' AS created_at,
       jsonb_build_object('sku', 'SKU-' || (i % 5000), 'qty', i % 17, 'tags', jsonb_build_array('retail', 'eu')) AS attrs,
       (i * 1.37)::numeric(14,2) AS amount,
       CASE WHEN i % 100 = 0 THEN E'note, with "quotes"\nand a newline' ELSE 'plain note ' || (i % 1000) END AS note
FROM generate_series(1, $ROWS) i;
VACUUM ANALYZE bench;
SQL
}

# The bench table cut in four by time (part1..part4).
bench_parts() {
  [ "$(psql -X -At -c "SELECT to_regclass('part4') IS NOT NULL")" = t ] && return
  psql -q -X -v ON_ERROR_STOP=1 -c "CREATE TABLE part1 AS SELECT * FROM bench WHERE created_at < timestamptz '2024-01-01' + $ROWS * interval '0.25 second'" \
    -c "CREATE TABLE part2 AS SELECT * FROM bench WHERE created_at >= timestamptz '2024-01-01' + $ROWS * interval '0.25 second' AND created_at < timestamptz '2024-01-01' + $ROWS * interval '0.5 second'" \
    -c "CREATE TABLE part3 AS SELECT * FROM bench WHERE created_at >= timestamptz '2024-01-01' + $ROWS * interval '0.5 second' AND created_at < timestamptz '2024-01-01' + $ROWS * interval '0.75 second'" \
    -c "CREATE TABLE part4 AS SELECT * FROM bench WHERE created_at >= timestamptz '2024-01-01' + $ROWS * interval '0.75 second'" \
    -c "VACUUM ANALYZE"
}

if [[ $PARTS == *dump* ]]; then
bench_table
psql -X -c "COPY bench TO STDOUT (FORMAT csv)" >"$WORK/reference.csv"
CSV_BYTES=$(stat -c %s "$WORK/reference.csv")
CSV_SHA=$(sha256sum "$WORK/reference.csv" | cut -d' ' -f1)
# Each --compression-level with each engine, one thread, on this table and on a second,
# different one (sensor readings: random numbers, timestamps and hex digests, far less
# repetitive): how the level mapping was chosen.
if [ "${BENCH_LEVELS:-1}" = 1 ]; then
  psql -q -X -v ON_ERROR_STOP=1 -c "CREATE TABLE readings AS
    SELECT i AS id, (random() * 1e6)::bigint AS device, timestamptz '2024-01-01' + random() * interval '30 days' AS taken_at,
           random() * 100 AS value, (random() * 1000)::int AS code,
           (ARRAY['ok','warn','error','unknown'])[1 + (random()*3)::int] AS status, md5(random()::text) AS trace
    FROM generate_series(1, $ROWS * 3 / 2) i"
  psql -X -c "COPY readings TO STDOUT (FORMAT csv)" >"$WORK/readings.csv"
  for table in reference readings; do
    log "compression levels: $table"
    echo "## $table: $(stat -c %s "$WORK/$table.csv") bytes of CSV; ratio to gzip -9" >>"$WORK/levels.txt"
    "$LEVELS" "$WORK/$table.csv" "$(gzip -9 -c "$WORK/$table.csv" | wc -c)" >>"$WORK/levels.txt"
  done
  rm "$WORK/readings.csv"
  psql -q -X -c "DROP TABLE readings"
fi
rm "$WORK/reference.csv"
log "table: $CSV_BYTES bytes of CSV"
s3a s3 mb s3://dump >/dev/null

DUMP_ENV=(env AWS_ACCESS_KEY_ID=AKA AWS_SECRET_ACCESS_KEY=SKA AWS_ENDPOINT_URL="$A_URL" AWS_REGION=us-east-1)
pipeline() { # LEVEL KEY: the original job's pipeline
  echo "psql -X -c 'COPY bench TO STDOUT (FORMAT csv)' | gzip -$1 | AWS_ACCESS_KEY_ID=AKA AWS_SECRET_ACCESS_KEY=SKA aws --endpoint-url $A_URL --region us-east-1 s3 cp - s3://dump/$2"
}
declare -A DUMP_KEY=(
  ["(b) psql | gzip -9 | aws s3 cp"]=b/bench.csv.gz
  ["(c) psql | gzip -6 | aws s3 cp"]=c/bench.csv.gz
  ["(d) egress-dump (default: level 6)"]=d6/2024-01-01/bench.csv.gz
  ["(d) egress-dump --compression-level 9"]=d9/2024-01-01/bench.csv.gz
  ["(d) egress-dump --compression-level 1"]=d1/2024-01-01/bench.csv.gz
  ["(d) egress-dump --compression-level 5"]=d5/2024-01-01/bench.csv.gz
  ["(d) egress-dump --single-gzip-member (zlib-rs, level 6)"]=dz/2024-01-01/bench.csv.gz
)
for round in $(seq "$ROUNDS"); do
  log "dump round $round"
  measure dump "(a) psql COPY > /dev/null" bash -c 'psql -X -c "COPY bench TO STDOUT (FORMAT csv)" >/dev/null'
  measure dump "(b) psql | gzip -9 | aws s3 cp" bash -c "$(pipeline 9 b/bench.csv.gz)"
  measure dump "(c) psql | gzip -6 | aws s3 cp" bash -c "$(pipeline 6 c/bench.csv.gz)"
  measure dump "(d) egress-dump (default: level 6)" "${DUMP_ENV[@]}" "$DUMP" --tables bench --output s3://dump/d6 --date 2024-01-01 --progress never
  measure dump "(d) egress-dump --compression-level 9" "${DUMP_ENV[@]}" "$DUMP" --tables bench --output s3://dump/d9 --date 2024-01-01 --progress never --compression-level 9
  measure dump "(d) egress-dump --compression-level 1" "${DUMP_ENV[@]}" "$DUMP" --tables bench --output s3://dump/d1 --date 2024-01-01 --progress never --compression-level 1
  measure dump "(d) egress-dump --compression-level 5" "${DUMP_ENV[@]}" "$DUMP" --tables bench --output s3://dump/d5 --date 2024-01-01 --progress never --compression-level 5
  measure dump "(d) egress-dump --single-gzip-member (zlib-rs, level 6)" "${DUMP_ENV[@]}" "$DUMP" --tables bench --output s3://dump/dz --date 2024-01-01 --progress never --single-gzip-member
done
for name in "${!DUMP_KEY[@]}"; do
  key=${DUMP_KEY[$name]}
  got=$(s3a s3 cp "s3://dump/$key" - | gzip -dc | sha256sum | cut -d' ' -f1)
  [ "$got" = "$CSV_SHA" ] || { log "NOT IDENTICAL to psql's COPY: $key"; FAILED=1; }
  printf '%s\t%s\n' "$name" "$(s3a s3api head-object --bucket dump --key "$key" --query ContentLength --output text)" >>"$WORK/sizes.tsv"
done
# Several tables: one snapshot, --jobs 1 vs 2 vs 4 (how the default was chosen).
bench_parts
for round in $(seq "$ROUNDS"); do
  for jobs in 1 2 4; do
    measure "dump 4 tables" "egress-dump --jobs $jobs" "${DUMP_ENV[@]}" "$DUMP" --tables "part1 part2 part3 part4" --jobs "$jobs" \
      --output "s3://dump/j$jobs" --date 2024-01-01 --progress never
  done
done
# One big table read in ctid chunks by several sessions (--split-larger-than) against the
# same table in one stream, at level 1 and at the default level; --jobs 8 and 16 for memory.
SPLIT_ARGS=(--tables bench --date 2024-01-01 --progress never)
for round in $(seq "$ROUNDS"); do
  for level in 1 6; do
    measure "dump split L$level" "egress-dump -L$level --jobs 2, one stream" "${DUMP_ENV[@]}" "$DUMP" "${SPLIT_ARGS[@]}" \
      --compression-level "$level" --jobs 2 --output "s3://dump/s$level-whole"
    measure "dump split L$level" "egress-dump -L$level --jobs 2 --split-larger-than 64MiB" "${DUMP_ENV[@]}" "$DUMP" "${SPLIT_ARGS[@]}" \
      --compression-level "$level" --jobs 2 --split-larger-than 64MiB --output "s3://dump/s$level-split"
  done
done
for jobs in 8 16; do
  measure "dump split memory" "egress-dump --jobs $jobs --split-larger-than 16MiB" "${DUMP_ENV[@]}" "$DUMP" "${SPLIT_ARGS[@]}" \
    --jobs "$jobs" --split-larger-than 16MiB --output "s3://dump/s-j$jobs"
done
for key in s1-whole s1-split s6-whole s6-split s-j8 s-j16; do
  got=$(s3a s3 cp "s3://dump/$key/2024-01-01/bench.csv.gz" - | gzip -dc | sha256sum | cut -d' ' -f1)
  [ "$got" = "$CSV_SHA" ] || { log "NOT IDENTICAL to psql's COPY: $key"; FAILED=1; }
done
if [ "$BIG" = 1 ]; then
  log "4x larger table for the memory check"
  psql -q -X -c "CREATE TABLE bench4 AS SELECT * FROM bench UNION ALL SELECT * FROM bench UNION ALL SELECT * FROM bench UNION ALL SELECT * FROM bench"
  measure dump "(d) egress-dump, 4x table" "${DUMP_ENV[@]}" "$DUMP" --tables bench4 --output s3://dump/d4x --date 2024-01-01 --progress never
fi
fi

# --- shards ----------------------------------------------------------------------------
# One day of the four part tables shared by 1, 2 and 4 processes (--shards, as the pods of an
# Indexed Job), all from one snapshot; each day's objects compared with the 1-process day's.
if [[ $PARTS == *shards* ]]; then
bench_table
bench_parts
s3a s3 mb s3://shards >/dev/null 2>&1 || true
export DUMP A_URL
# shards N: N processes with indexes 0..N-1 started at once; fails if any fails.
shards_run() {
  local n=$1 i pids=() rc=0
  for i in $(seq 0 $((n - 1))); do
    SHARDS=$n JOB_COMPLETION_INDEX=$i AWS_ACCESS_KEY_ID=AKA AWS_SECRET_ACCESS_KEY=SKA AWS_ENDPOINT_URL="$A_URL" \
      AWS_REGION=us-east-1 "$DUMP" --tables "part1 part2 part3 part4" --output "s3://shards/n$n" --date 2024-01-01 \
      --progress never >"/tmp/egress-bench-shard-$n-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || rc=1; done
  return $rc
}
for round in $(seq "$ROUNDS"); do
  for n in 1 2 4; do
    measure shards "egress-dump --shards $n ($n processes)" bash -c "$(declare -f shards_run); shards_run $n"
  done
done
for n in 2 4; do
  for t in part1 part2 part3 part4; do
    a=$(s3a s3 cp "s3://shards/n1/2024-01-01/$t.csv.gz" - | sha256sum | cut -d' ' -f1)
    b=$(s3a s3 cp "s3://shards/n$n/2024-01-01/$t.csv.gz" - | sha256sum | cut -d' ' -f1)
    [ "$a" = "$b" ] || { log "NOT IDENTICAL: $t dumped by $n processes"; FAILED=1; }
  done
done
rm -f /tmp/egress-bench-shard-*.log
fi

# --- sync ------------------------------------------------------------------------------
# sync_suite NAME URL KEY SECRET PROVIDER: every contender mirrors the input (s3s-fs A,
# bucket src) into buckets of its own at the destination, ROUNDS times cold (a fresh bucket
# each round, contenders alternating), then re-runs with nothing changed and with 20 small
# objects changed. Small objects (dated folders) and large ones (large/) are measured apart.
sync_suite() {
  local name=$1 url=$2 ak=$3 sk=$4 provider=$5 r
  export RCLONE_CONFIG_DST_TYPE=s3 RCLONE_CONFIG_DST_PROVIDER=$provider RCLONE_CONFIG_DST_ENDPOINT=$url \
    RCLONE_CONFIG_DST_ACCESS_KEY_ID=$ak RCLONE_CONFIG_DST_SECRET_ACCESS_KEY=$sk RCLONE_CONFIG_DST_FORCE_PATH_STYLE=true
  dst() { AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk aws --endpoint-url "$url" --region us-east-1 "$@"; }
  local egress=(env INPUT_URL="$A_URL" INPUT_ACCESS_KEY_ID=AKA INPUT_SECRET_ACCESS_KEY=SKA INPUT_PATH=src
    OUTPUT_URL="$url" OUTPUT_ACCESS_KEY_ID="$ak" OUTPUT_SECRET_ACCESS_KEY="$sk" "$SYNC" --progress never)
  for r in $(seq "$ROUNDS"); do for b in rc1 rc16 egr; do dst s3 mb "s3://$b-$r" >/dev/null; done; done
  # Both tools sync bucket roots with a filter: rclone probes a sub-path root with a HEAD that
  # s3s-fs answers with a 500 only after ~40 s, which would measure the probe, not the copy.
  for phase in "small cold: $SMALL objects|--exclude|large/**" "large cold: $LARGE x $LARGE_MIB MiB|--include|large/**"; do
    IFS='|' read -r label flag pattern <<<"$phase"
    for r in $(seq "$ROUNDS"); do
      log "sync $name: $label, round $r"
      # Contenders alternate: first in odd rounds, last in even ones.
      local order=(rc1 rc16 egr)
      ((r % 2 == 0)) && order=(egr rc16 rc1)
      for c in "${order[@]}"; do
        case $c in
          rc1) measure "sync $name: $label" "rclone sync (defaults)" rclone sync "$flag" "$pattern" src:src "dst:rc1-$r" ;;
          rc16) measure "sync $name: $label" "rclone sync --transfers 16 --checkers 16" rclone sync --transfers 16 --checkers 16 "$flag" "$pattern" src:src "dst:rc16-$r" ;;
          egr) measure "sync $name: $label" "egress-sync" "${egress[@]}" --output-path "egr-$r" "$flag" "$pattern" ;;
        esac
      done
    done
  done
  for r in $(seq "$ROUNDS"); do
    measure "sync $name: no-op re-run: all $((SMALL + LARGE)) objects" "rclone sync (defaults)" rclone sync src:src dst:rc1-1
    measure "sync $name: no-op re-run: all $((SMALL + LARGE)) objects" "rclone sync --transfers 16 --checkers 16" rclone sync --transfers 16 --checkers 16 src:src dst:rc16-1
    measure "sync $name: no-op re-run: all $((SMALL + LARGE)) objects" "egress-sync" "${egress[@]}" --output-path egr-1
  done
  change_small_objects
  measure "sync $name: re-run after 20 small objects changed" "rclone sync (defaults)" rclone sync src:src dst:rc1-1
  measure "sync $name: re-run after 20 small objects changed" "rclone sync --transfers 16 --checkers 16" rclone sync --transfers 16 --checkers 16 src:src dst:rc16-1
  measure "sync $name: re-run after 20 small objects changed" "egress-sync" "${egress[@]}" --output-path egr-1
  for b in rc1-1 rc16-1 egr-1; do
    python3 "$ROOT/bench/compare.py" "$A_URL" AKA SKA src "$url" "$ak" "$sk" "$b" >&2 || FAILED=1
  done
}

# noop_listing_etags NAME URL KEY SECRET: the same no-op re-run from an input that lists
# ETags, as AWS S3 and Ceph RGW do (s3s-fs lists none, so each pair needs a HEAD): the
# copies above, mirrored once more inside the destination, then re-run.
noop_listing_etags() {
  local name=$1 url=$2 ak=$3 sk=$4 r
  dst() { AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk aws --endpoint-url "$url" --region us-east-1 "$@"; }
  for b in cc-rc cc-egr; do dst s3 mb "s3://$b" >/dev/null; done
  local egress=(env INPUT_URL="$url" INPUT_ACCESS_KEY_ID="$ak" INPUT_SECRET_ACCESS_KEY="$sk" INPUT_PATH=egr-1
    OUTPUT_URL="$url" OUTPUT_ACCESS_KEY_ID="$ak" OUTPUT_SECRET_ACCESS_KEY="$sk" OUTPUT_PATH=cc-egr "$SYNC" --progress never)
  rclone sync --transfers 16 --checkers 16 dst:rc16-1 dst:cc-rc
  "${egress[@]}" >/dev/null
  for r in $(seq "$ROUNDS"); do
    measure "sync $name: no-op re-run, input listing ETags ($name to $name)" "rclone sync (defaults)" rclone sync dst:rc16-1 dst:cc-rc
    measure "sync $name: no-op re-run, input listing ETags ($name to $name)" "rclone sync --transfers 16 --checkers 16" rclone sync --transfers 16 --checkers 16 dst:rc16-1 dst:cc-rc
    measure "sync $name: no-op re-run, input listing ETags ($name to $name)" "egress-sync" "${egress[@]}"
  done
}

# Rewrite 20 small input objects with new bytes of the same size (a new seed each call).
CHANGE_SEED=7
change_small_objects() {
  python3 - "$WORK/src" "$SMALL" "$CHANGE_SEED" <<'PY'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
for i in range(0, n, max(1, n // 20)):  # 20 objects: same size, new bytes
    path = os.path.join(root, f"2024-01-{i % 28 + 1:02d}", f"obj-{i:05d}.csv.gz")
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(rnd.randbytes(size))
PY
  CHANGE_SEED=$((CHANGE_SEED + 1))
  s3a s3 sync --quiet --exact-timestamps "$WORK/src" s3://src/
}

if [[ $PARTS == *sync* || $PARTS == *ceph* ]]; then
log "generating $SMALL small and $LARGE x $LARGE_MIB MiB objects"
mkdir -p "$WORK/src/large"
python3 - "$WORK/src" "$SMALL" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)  # 4-64 KiB each, under dated folders
for i in range(n):
    d = os.path.join(root, f"2024-01-{i % 28 + 1:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"obj-{i:05d}.csv.gz"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(4096, 65536)))
PY
for i in $(seq "$LARGE"); do head -c "$((LARGE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/src/large/part-$i.bin"; done
s3a s3 mb s3://src >/dev/null
# The AWS CLI uploads the large objects in 8 MiB parts (multipart ETags).
s3a s3 sync --quiet "$WORK/src" s3://src/
export RCLONE_CONFIG_SRC_TYPE=s3 RCLONE_CONFIG_SRC_PROVIDER=Other RCLONE_CONFIG_SRC_ENDPOINT=$A_URL \
  RCLONE_CONFIG_SRC_ACCESS_KEY_ID=AKA RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY=SKA RCLONE_CONFIG_SRC_FORCE_PATH_STYLE=true
fi
[[ $PARTS == *sync* ]] && sync_suite s3s-fs "$B_URL" AKB SKB Other
start_ceph() {
  [ -n "${CEPH_DIR:-}" ] && return
  log "starting Ceph RGW"
  CEPH_DIR=$WORK/ceph CEPH_PORT=$(free_port)
  # On disk (bluestore): memstore never gives memory back, and slows as it fills.
  CEPH_OUT=$(CEPH_OBJECTSTORE=bluestore bash "$ROOT/tests/harness/ceph-rgw.sh" start "$CEPH_DIR" "$CEPH_PORT" 2>"$WORK/ceph.log") \
    || { cat "$WORK/ceph.log" >&2; exit 1; }
  CEPH_AK=$(sed -n 's/^ACCESS_KEY=//p' <<<"$CEPH_OUT") CEPH_SK=$(sed -n 's/^SECRET_KEY=//p' <<<"$CEPH_OUT")
}
if [[ $PARTS == *ceph* ]]; then
  start_ceph
  sync_suite ceph "http://127.0.0.1:$CEPH_PORT" "$CEPH_AK" "$CEPH_SK" Ceph
  noop_listing_etags ceph "http://127.0.0.1:$CEPH_PORT" "$CEPH_AK" "$CEPH_SK"
fi

# --- listing ---------------------------------------------------------------------------
# LIST_OBJECTS 100-byte objects in Ceph RGW (100 dated folders), mirrored inside Ceph: a
# no-op re-run and the decision phase of a cold copy (--dry-run into an empty bucket), with
# one listing stream (--list-jobs 1) and with the default 8. The input is written by
# egress-sync from local files, the output by rclone (server-side copies, so that rclone's
# own no-op finds its modification times and copies nothing).
if [[ $PARTS == *listing* ]]; then
  start_ceph
  LIST_OBJECTS=${BENCH_LIST_OBJECTS:-100000}
  CE_URL=http://127.0.0.1:$CEPH_PORT
  ce() { AWS_ACCESS_KEY_ID=$CEPH_AK AWS_SECRET_ACCESS_KEY=$CEPH_SK aws --endpoint-url "$CE_URL" --region us-east-1 "$@"; }
  for b in lsrc ldst lempty; do ce s3 mb "s3://$b" >/dev/null; done
  python3 - "$WORK/list" "$LIST_OBJECTS" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
data = os.urandom(100)
for i in range(n):
    d = os.path.join(root, f"2024-{1 + (i % 100) // 28:02d}-{1 + (i % 100) % 28:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"t{i:07d}.csv.gz"), "wb") as f:
        f.write(data)
PY
  log "writing $LIST_OBJECTS objects into Ceph (minutes)"
  OUTPUT_URL=$CE_URL OUTPUT_ACCESS_KEY_ID=$CEPH_AK OUTPUT_SECRET_ACCESS_KEY=$CEPH_SK OUTPUT_PATH=lsrc INPUT_PATH=$WORK/list \
    "$SYNC" --progress never --jobs 64 >/dev/null 2>&1
  rm -rf "$WORK/list"
  export RCLONE_CONFIG_CE_TYPE=s3 RCLONE_CONFIG_CE_PROVIDER=Ceph RCLONE_CONFIG_CE_ENDPOINT=$CE_URL \
    RCLONE_CONFIG_CE_ACCESS_KEY_ID=$CEPH_AK RCLONE_CONFIG_CE_SECRET_ACCESS_KEY=$CEPH_SK RCLONE_CONFIG_CE_FORCE_PATH_STYLE=true
  rclone copy --transfers 64 --checkers 64 ce:lsrc ce:ldst
  ce_sync=(env INPUT_URL="$CE_URL" INPUT_ACCESS_KEY_ID="$CEPH_AK" INPUT_SECRET_ACCESS_KEY="$CEPH_SK" INPUT_PATH=lsrc
    OUTPUT_URL="$CE_URL" OUTPUT_ACCESS_KEY_ID="$CEPH_AK" OUTPUT_SECRET_ACCESS_KEY="$CEPH_SK" "$SYNC" --progress never)
  for r in $(seq "$ROUNDS"); do
    g="listing: no-op re-run over $LIST_OBJECTS objects"
    measure "$g" "rclone sync --transfers 16 --checkers 16" rclone sync --transfers 16 --checkers 16 ce:lsrc ce:ldst
    measure "$g" "egress-sync --list-jobs 1" "${ce_sync[@]}" --output-path ldst --list-jobs 1
    measure "$g" "egress-sync" "${ce_sync[@]}" --output-path ldst
    g="listing: cold copy's decisions (--dry-run) over $LIST_OBJECTS objects"
    measure "$g" "rclone sync --dry-run --checkers 16" rclone sync --dry-run --checkers 16 ce:lsrc ce:lempty
    measure "$g" "egress-sync --list-jobs 1" "${ce_sync[@]}" --output-path lempty --dry-run --list-jobs 1
    measure "$g" "egress-sync" "${ce_sync[@]}" --output-path lempty --dry-run
  done
fi

# --- many objects ----------------------------------------------------------------------
# MANY 1 KiB files in local directories: a cold copy and a no-op re-run, at the default
# --jobs and at --jobs 256 (memory must not grow with the number of objects), and a cold
# copy with --durability process (no flush before each name, as rclone).
if [[ $PARTS == *many* ]]; then
  MANY=${BENCH_MANY:-300000}
  log "generating $MANY local files"
  python3 - "$WORK/many" "$MANY" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
data = os.urandom(1024)
for d in range(100):
    os.makedirs(os.path.join(root, f"d{d:03d}"), exist_ok=True)
for i in range(n):
    with open(os.path.join(root, f"d{i % 100:03d}", f"obj-{i:07d}.bin"), "wb") as f:
        f.write(data)
PY
  for jobs in 64 256; do
    measure "many: $MANY objects, cold" "egress-sync --jobs $jobs" "$SYNC" --progress never --jobs "$jobs" --input-path "$WORK/many" --output-path "$WORK/many-out-$jobs"
    measure "many: $MANY objects, no-op" "egress-sync --jobs $jobs" "$SYNC" --progress never --jobs "$jobs" --input-path "$WORK/many" --output-path "$WORK/many-out-$jobs"
  done
  # Named as soon as written, as rclone does (a killed run still leaves only whole objects).
  measure "many: $MANY objects, cold" "egress-sync --jobs 64 --durability process" "$SYNC" --progress never --durability process --input-path "$WORK/many" --output-path "$WORK/many-out-p"
  measure "many: $MANY objects, cold" "rclone sync --transfers 16 --checkers 16" rclone sync --transfers 16 --checkers 16 "$WORK/many" "$WORK/many-rc"
  measure "many: $MANY objects, no-op" "rclone sync --transfers 16 --checkers 16" rclone sync --transfers 16 --checkers 16 "$WORK/many" "$WORK/many-rc"
  rm -rf "$WORK/many" "$WORK/many-out-"* "$WORK/many-rc"
fi

# --- parquet ---------------------------------------------------------------------------
# Typed days: egress-dump --format parquet beside DuckDB 1.4.4's postgres scanner (its
# extension loaded from its file, offline), both to local files; then which types each
# writes exactly, on the tests' type-torture table (bench/exactness.py).
if [[ $PARTS == *parquet* ]]; then
  bench_table
  PY=${BENCH_PYTHON:-/opt/egress-py/bin/python}
  PG_EXT=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/duckdb_ext/extensions/v1.4.4/linux_amd64/postgres_scanner.duckdb_extension
  DSN="host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres"
  half=$(( $(psql -X -At -c "SELECT pg_relation_size('bench') / 8192") / 2 ))
  PARQUET_FLOOR="psql -X -c \"COPY (SELECT * FROM bench WHERE ctid < '($half,0)'::tid) TO STDOUT (FORMAT binary)\" >/dev/null &
    psql -X -c \"COPY (SELECT * FROM bench WHERE ctid >= '($half,0)'::tid) TO STDOUT (FORMAT binary)\" >/dev/null; wait"
  for round in $(seq "$ROUNDS"); do
    rm -rf "$WORK/pq-egress" "$WORK/pq-split" "$WORK/pq-duck.parquet"
    # Contenders rotate: each goes first in one round of four. DuckDB's scanner reads a
    # large table on several connections by default; egress-dump does with the flags of
    # the third line (one stream otherwise). The floor is PostgreSQL alone: the same
    # binary COPY on two connections, read by psql and thrown away, no client work at all.
    contenders=(floor duck egress split)
    for i in 0 1 2 3; do
      c=${contenders[$(((round + i) % 4))]}
      case $c in
        floor) measure parquet "(floor) 2 x psql COPY (FORMAT binary) > /dev/null" bash -c "$PARQUET_FLOOR" ;;
        duck) measure parquet "DuckDB 1.4.4 COPY (FROM pg.public.bench) TO 'bench.parquet'" "$PY" "$ROOT/bench/duckdb_copy.py" "$PG_EXT" "$DSN" bench "$WORK/pq-duck.parquet" ;;
        egress) measure parquet "egress-dump --format parquet" "$DUMP" --tables bench --output "$WORK/pq-egress" --date 2024-01-01 --format parquet --progress never ;;
        split) measure parquet "egress-dump --format parquet --jobs 2 --split-larger-than 64MiB" "$DUMP" --tables bench --output "$WORK/pq-split" --date 2024-01-01 --format parquet --progress never --jobs 2 --split-larger-than 64MiB ;;
      esac
    done
  done
  printf '%s\t%s\n' "DuckDB 1.4.4 COPY (FROM pg.public.bench) TO 'bench.parquet'" "$(stat -c %s "$WORK/pq-duck.parquet")" >>"$WORK/sizes.tsv"
  printf '%s\t%s\n' "egress-dump --format parquet" "$(stat -c %s "$WORK/pq-egress/2024-01-01/bench.parquet")" >>"$WORK/sizes.tsv"
  printf '%s\t%s\n' "egress-dump --format parquet --jobs 2 --split-larger-than 64MiB" "$(stat -c %s "$WORK/pq-split/2024-01-01/bench.parquet")" >>"$WORK/sizes.tsv"
  # The chunked read writes the same file as the one stream (rows in ctid order).
  cmp -s "$WORK/pq-egress/2024-01-01/bench.parquet" "$WORK/pq-split/2024-01-01/bench.parquet" \
    || { log "the chunked Parquet file differs from the one-stream file"; FAILED=1; }
  # Every file holds the table's rows.
  for f in "$WORK/pq-duck.parquet" "$WORK/pq-egress/2024-01-01/bench.parquet"; do
    n=$("$PY" -c 'import sys, pyarrow.parquet as pq; print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)' "$f")
    [ "$n" = "$(psql -X -At -c 'SELECT count(*) FROM bench')" ] || { log "WRONG ROW COUNT in $f: $n"; FAILED=1; }
  done
  psql -q -X -v ON_ERROR_STOP=1 -f "$ROOT/tests/dump/torture.sql"
  mkdir -p "$WORK/exactness"
  "$PY" "$ROOT/bench/exactness.py" "$DUMP" "$PG_EXT" "$WORK/exactness" >"$WORK/exactness.md" || FAILED=1
fi

# --- report ----------------------------------------------------------------------------
SMALL_BYTES=$( [ -d "$WORK/src" ] && du -sb --exclude=large "$WORK/src" | cut -f1 || echo 0)
[ -s "$WORK/levels.txt" ] && { echo "### Compression levels (one thread; CPU includes hashing both sides)"; cat "$WORK/levels.txt"; echo; }
[ -s "$WORK/exactness.md" ] && { echo "### Types written exactly (type-torture table)"; cat "$WORK/exactness.md"; echo; }
python3 "$ROOT/bench/report.py" "$RESULTS" "$WORK/sizes.tsv" "$CSV_BYTES" "$SMALL" "$LARGE" "$LARGE_MIB" "$SMALL_BYTES"
if [ "$FAILED" = 0 ]; then log "all produced objects identical"; else log "SOME OBJECTS DIFFER OR A CONTENDER FAILED"; exit 1; fi
