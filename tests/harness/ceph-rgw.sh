#!/usr/bin/env bash
# A throwaway one-monitor, one-OSD Ceph cluster with a RADOS Gateway (S3) on loopback, for
# integration tests. Everything (config, fsid, keyring, mon store, OSD, pid files, admin
# sockets, logs) lives under <dir>; nothing touches /etc/ceph or /var/lib/ceph, so several
# instances can run side by side.
#
#   ceph-rgw.sh start <dir> <rgw_port> [<mon_port>]
#       Prints exactly two lines on stdout once RGW answers S3 requests:
#         ACCESS_KEY=...
#         SECRET_KEY=...
#       Progress goes to stderr; daemon logs to <dir>/log/.
#   ceph-rgw.sh stop <dir>
#       Kills the daemons recorded in <dir>/run/*.pid.
#
# Needs Debian's ceph-mon, ceph-osd, radosgw and ceph-common packages.
# Config choices: no cephx (auth none), msgr v2 only, memstore OSD, pools of size 1 with
# few PGs, no mgr (not needed for pools/RGW), beast frontend on 127.0.0.1.
set -euo pipefail
export PATH="$PATH:/usr/bin:/usr/sbin:/bin:/sbin"

log() { echo "ceph-rgw: $*" >&2; }
die() {
    log "ERROR: $*"
    if [[ -n "${DIR:-}" && -d "${DIR}/log" ]]; then
        for f in "$DIR"/log/*.log; do
            [[ -s "$f" ]] || continue
            echo "---- tail of $f ----" >&2
            tail -n 30 "$f" >&2
        done
        # Leave nothing running behind a failed start.
        [[ "${STARTING:-}" == 1 ]] && stop "$DIR"
    fi
    exit 1
}

need() {
    local missing=()
    for b in "$@"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}; install with: apt-get install ceph-mon ceph-osd radosgw ceph-common"
    fi
}

# A free loopback port: let the kernel pick one (python3 is a dependency of the ceph CLI).
free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' ||
        die "cannot pick a free port"
}

# The OSD's store: memstore in RAM (tests; CEPH_MEMSTORE_BYTES, default 2 GiB), or with
# CEPH_OBJECTSTORE=bluestore a sparse file on disk (benchmarks that write gigabytes:
# memstore never gives memory back).
objectstore() {
    if [[ ${CEPH_OBJECTSTORE:-memstore} == bluestore ]]; then
        printf '%s\n' "osd objectstore = bluestore" "bluestore block path = $DIR/osd/block" \
            "bluestore block create = true" "bluestore block size = 64G" "bluestore fsck on mkfs = false" \
            "osd memory target = 1073741824" "bluestore cache autotune = false" "bluestore cache size = 268435456"
    else
        printf '%s\n' "osd objectstore = memstore" "memstore device bytes = ${CEPH_MEMSTORE_BYTES:-2147483648}"
    fi
}

# Does an HTTP server answer on 127.0.0.1:$1? (Plain bash: no curl needed.)
http_answers() {
    local status
    status=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" >&3
        IFS= read -r line <&3 && printf "%s" "$line"' probe "$1" 2>/dev/null) || return 1
    [[ $status == HTTP/* ]]
}

stop() {
    local dir=$1 f pid
    [[ -d "$dir/run" ]] || return 0
    # RGW first, then the OSD, then the monitor.
    for name in watchdog client.rgw osd.0 mon.a; do
        f="$dir/run/$name.pid"
        [[ -s "$f" ]] || continue
        pid=$(<"$f")
        # The watchdog runs `stop` itself (bash execs it in place): do not kill ourselves.
        [[ $pid == "$$" ]] && continue
        kill -KILL "$pid" 2>/dev/null || true
    done
    # Wait (briefly) until they are gone so the ports and files are released.
    for name in client.rgw osd.0 mon.a; do
        f="$dir/run/$name.pid"
        [[ -s "$f" ]] || continue
        pid=$(<"$f")
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        rm -f "$f"
    done
    rm -f "$dir/run/watchdog.pid"
}

start() {
    DIR=$(realpath -m "$1")
    STARTING=1
    local rgw_port=$2 mon_port=${3:-}
    need ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool
    mkdir -p "$DIR"
    [[ -e "$DIR/ceph.conf" ]] && die "$DIR already holds a cluster"
    mkdir -p "$DIR"/{run,log,crash,mon,osd,rgw}
    [[ -n "$mon_port" ]] || mon_port=$(free_port)
    local fsid osd_uuid conf="$DIR/ceph.conf"
    fsid=$(</proc/sys/kernel/random/uuid)
    osd_uuid=$(</proc/sys/kernel/random/uuid)

    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
ms bind ipv6 = false

auth cluster required = none
auth service required = none
auth client required = none
# Daemons (radosgw) default to msgr2 "secure" mode towards the monitor, which needs cephx.
ms mon client mode = crc secure
keyring = $DIR/keyring

run dir = $DIR/run
crash dir = $DIR/crash
log file = $DIR/log/\$name.log
mon cluster log file = $DIR/log/cluster.log
log to stderr = false
err to stderr = false
log to syslog = false
mon cluster log to syslog = false
debug ms = 0
debug auth = 0
debug monc = 0
client mount timeout = 30
rados mon op timeout = 60

mon data = $DIR/mon/\$id
osd data = $DIR/osd/\$id
mgr data = $DIR/mgr/\$id

osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false

[mon]
pid file = $DIR/run/\$name.pid
# The monitor refuses to start when its filesystem's free space, in whole percent, is at or
# below 'crit': a CI machine's 252 GB disk with 1.4 GB free reads as 0% and failed every Ceph
# test (stop 30). The store is in RAM (memstore) and the monitor writes a few MB: never refuse.
mon data avail crit = -1
mon data avail warn = -1
paxos propose interval = 0.05
mon osd reporter subtree level = osd

[osd]
pid file = $DIR/run/\$name.pid
$(objectstore)
osd crush update on start = true
osd op num shards = 1
osd op num threads per shard = 2

[client]
log file = $DIR/log/\$name.\$pid.log

[client.rgw]
pid file = $DIR/run/\$name.pid
log file = $DIR/log/rgw.log
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
# No DNS name: path-style requests only (bucket in the path), as the tests use.
rgw dns name =
rgw enable usage log = false
rgw thread pool size = 64
debug rgw = 1
EOF

    # Optional watchdog: stop the cluster once process $CEPH_RGW_WATCH_PID is gone (a test
    # runner killed without running its destructors must not leak daemons). It waits for
    # this script too, so that a start still in progress cannot add daemons after the stop.
    if [[ -n "${CEPH_RGW_WATCH_PID:-}" ]]; then
        # shellcheck disable=SC2016
        setsid bash -c '
            while kill -0 "$1" 2>/dev/null && [[ -e "$3/ceph.conf" ]]; do sleep 1; done
            while kill -0 "$2" 2>/dev/null; do sleep 0.2; done
            "$4" stop "$3"' \
            watchdog "$CEPH_RGW_WATCH_PID" "$$" "$DIR" "$(realpath "$0")" </dev/null >/dev/null 2>&1 &
        echo $! >"$DIR/run/watchdog.pid"
    fi

    local c=(-c "$conf")
    export CEPH_CONF="$conf"

    log "monitor on 127.0.0.1:$mon_port (fsid $fsid)"
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
    ceph-mon "${c[@]}" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" \
        </dev/null >>"$DIR/log/mon-mkfs.log" 2>&1 || die "ceph-mon --mkfs failed"
    # Daemons fork; keep their stdio off our stdout so callers reading it see EOF.
    ceph-mon "${c[@]}" -i a </dev/null >>"$DIR/log/mon.out" 2>&1 || die "ceph-mon failed to start"

    ceph "${c[@]}" --connect-timeout 20 osd new "$osd_uuid" </dev/null >/dev/null 2>>"$DIR/log/ceph-cli.log" || die "ceph osd new failed (monitor not up?)"
    mkdir -p "$DIR/osd/0"
    ceph-osd "${c[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/osd-mkfs.log" 2>&1 ||
        die "ceph-osd --mkfs failed"
    ceph-osd "${c[@]}" -i 0 </dev/null >>"$DIR/log/osd.out" 2>&1 || die "ceph-osd failed to start"
    log "OSD started"

    # RGW creates its pools itself; it just needs the OSD to be up.
    local i out
    for i in $(seq 1 300); do
        # (Capture first: `grep -q` closing the pipe early would fail the pipeline.)
        out=$(ceph "${c[@]}" osd dump </dev/null 2>>"$DIR/log/ceph-cli.log" || true)
        if grep -q '^osd\.0 up' <<<"$out"; then break; fi
        ((i == 300)) && die "OSD did not come up"
        sleep 0.1
    done
    log "OSD up"

    # Foreground mode in the background: radosgw only daemonizes after it reached the cluster.
    setsid radosgw "${c[@]}" -n client.rgw -f </dev/null >>"$DIR/log/rgw.out" 2>&1 &
    echo $! >"$DIR/run/client.rgw.pid"
    for i in $(seq 1 600); do
        if http_answers "$rgw_port"; then break; fi
        ((i == 600)) && die "RGW did not answer on 127.0.0.1:$rgw_port"
        [[ -s "$DIR/run/client.rgw.pid" ]] && ! kill -0 "$(<"$DIR/run/client.rgw.pid")" 2>/dev/null &&
            die "radosgw exited"
        grep -q 'failed to bind address' "$DIR/log/rgw.log" 2>/dev/null && die "RGW port $rgw_port is taken"
        sleep 0.1
    done
    log "RGW answers on 127.0.0.1:$rgw_port"

    local access secret
    access="AK$(od -An -N9 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)"
    secret="$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
    radosgw-admin "${c[@]}" user create --uid=egress-test --display-name="egress test" \
        --access-key="$access" --secret-key="$secret" >"$DIR/log/user.json" 2>>"$DIR/log/radosgw-admin.log" ||
        die "radosgw-admin user create failed"
    echo "ACCESS_KEY=$access"
    echo "SECRET_KEY=$secret"
}

case "${1:-}" in
start)
    [[ $# -ge 3 ]] || { echo "usage: $0 start <dir> <rgw_port> [<mon_port>]" >&2; exit 2; }
    start "$2" "$3" "${4:-}"
    ;;
stop)
    [[ $# -eq 2 ]] || { echo "usage: $0 stop <dir>" >&2; exit 2; }
    stop "$2"
    ;;
*)
    echo "usage: $0 start <dir> <rgw_port> [<mon_port>] | stop <dir>" >&2
    exit 2
    ;;
esac
