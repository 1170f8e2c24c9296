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

log() { echo "ceph-rgw: $*" >&2; }
die() {
    log "ERROR: $*"
    if [[ -n "${DIR:-}" && -d "${DIR}/log" ]]; then
        for f in "$DIR"/log/*.log; do
            [[ -s "$f" ]] || continue
            echo "---- tail of $f ----" >&2
            tail -n 30 "$f" >&2
        done
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

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        # Nothing answering there, and nothing bound (ss may be missing: then just connect).
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            if ! command -v ss >/dev/null 2>&1 || ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
                echo "$p"
                return
            fi
        fi
    done
    die "no free port found"
}

stop() {
    local dir=$1 f pid
    [[ -d "$dir/run" ]] || return 0
    # RGW first, then the OSD, then the monitor.
    for name in client.rgw osd.0 mon.a; do
        f="$dir/run/$name.pid"
        [[ -s "$f" ]] || continue
        pid=$(<"$f")
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
}

start() {
    DIR=$(realpath -m "$1")
    local rgw_port=$2 mon_port=${3:-}
    need ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool uuidgen curl
    mkdir -p "$DIR"
    [[ -e "$DIR/ceph.conf" ]] && die "$DIR already holds a cluster"
    mkdir -p "$DIR"/{run,log,crash,mon,osd,rgw}
    [[ -n "$mon_port" ]] || mon_port=$(free_port)
    local fsid osd_uuid conf="$DIR/ceph.conf"
    fsid=$(uuidgen)
    osd_uuid=$(uuidgen)

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
auth allow insecure global id reclaim = true
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
mon data avail crit = 1
mon data avail warn = 2
paxos propose interval = 0.05
mon osd reporter subtree level = osd

[osd]
pid file = $DIR/run/\$name.pid
osd objectstore = memstore
memstore device bytes = 2147483648
osd crush update on start = true
osd op num shards = 1
osd op num threads per shard = 2
osd memory target = 939524096

[client]
log file = $DIR/log/\$name.\$pid.log

[client.rgw]
pid file = $DIR/run/\$name.pid
log file = $DIR/log/rgw.log
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw dns name =
rgw enable usage log = false
rgw crypt require ssl = false
rgw thread pool size = 64
debug rgw = 1
EOF

    local c=(-c "$conf")
    export CEPH_CONF="$conf"

    log "monitor on 127.0.0.1:$mon_port (fsid $fsid)"
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
    ceph-mon "${c[@]}" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" ||
        die "ceph-mon --mkfs failed"
    ceph-mon "${c[@]}" -i a || die "ceph-mon failed to start"

    ceph "${c[@]}" --connect-timeout 20 osd new "$osd_uuid" >/dev/null || die "ceph osd new failed (monitor not up?)"
    mkdir -p "$DIR/osd/0"
    ceph-osd "${c[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/osd-mkfs.log" 2>&1 ||
        die "ceph-osd --mkfs failed"
    ceph-osd "${c[@]}" -i 0 || die "ceph-osd failed to start"
    log "OSD started"

    # RGW creates its pools itself; it just needs the OSD to be up.
    local i
    for i in $(seq 1 300); do
        if ceph "${c[@]}" osd dump 2>/dev/null | grep -q '^osd\.0 up'; then break; fi
        ((i == 300)) && die "OSD did not come up"
        sleep 0.1
    done
    log "OSD up"

    # Foreground mode in the background: radosgw only daemonizes after it reached the cluster.
    setsid radosgw "${c[@]}" -n client.rgw -f </dev/null >>"$DIR/log/rgw.out" 2>&1 &
    echo $! >"$DIR/run/client.rgw.pid"
    for i in $(seq 1 600); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$rgw_port/" 2>/dev/null; then break; fi
        ((i == 600)) && die "RGW did not answer on 127.0.0.1:$rgw_port"
        [[ -s "$DIR/run/client.rgw.pid" ]] && ! kill -0 "$(<"$DIR/run/client.rgw.pid")" 2>/dev/null &&
            die "radosgw exited"
        sleep 0.1
    done
    log "RGW answers on 127.0.0.1:$rgw_port"

    local access secret
    access="AK$(head -c 64 /dev/urandom | tr -dc 'A-Z0-9' | head -c 18)"
    secret="$(head -c 256 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 40)"
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
