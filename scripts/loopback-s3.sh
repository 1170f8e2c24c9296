# Sourced by bench/run.sh and tests/images/run.sh: s3s-fs servers on loopback. The caller
# sets WORK (a scratch directory), S3S_FS (the binary) and PIDS (an array; it stops them).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_s3 NAME: an s3s-fs serving $WORK/NAME with keys AK<NAME>/SK<NAME>; sets <NAME>_URL.
start_s3() {
  local name=$1 port; port=$(free_port)
  mkdir -p "$WORK/$name"
  "$S3S_FS" --host 127.0.0.1 --port "$port" --access-key "AK$name" --secret-key "SK$name" "$WORK/$name" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
  printf -v "${name}_URL" 'http://127.0.0.1:%s' "$port"
}
