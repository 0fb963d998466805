#!/usr/bin/env bash
# demo.sh — brings the lab up (unless it is up already) and shows two pods on
# different nodes talking through it: an iperf3 run, a 10 MiB file sent and
# checked with sha256sum, and the dataplane counters before and after.
#
#   sudo scripts/demo.sh
#
# Same environment as lab.sh (KXDP_LAB_PREFIX, KXDP_RUN_DIR, KXDP_KERNEL_NODES,
# ...). Leaves the lab up; `scripts/lab.sh down` removes it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
P=${KXDP_LAB_PREFIX:-kxdp}
RUN_DIR=${KXDP_RUN_DIR:-/run/kxdp/$P}
# Seconds: iperf3 run, and the bound on every command of the demo.
IPERF_SECONDS=3
LIMIT=30

case ${1:-} in
    -h | --help)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac
[[ $(id -u) -eq 0 ]] || {
    echo "error: demo.sh needs root: sudo scripts/demo.sh" >&2
    exit 1
}

# shellcheck source=deps.sh
source "$ROOT/scripts/deps.sh"
kxdp_in_mounted_root "$ROOT/scripts/demo.sh" "$@"

# Section titles in bold on a terminal, plain in a log.
if [[ -t 1 ]]; then
    section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    section() { printf '\n== %s\n' "$*"; }
fi

if ! "$ROOT/scripts/lab.sh" status >/dev/null 2>&1; then
    section "bringing the lab up: scripts/lab.sh up"
    "$ROOT/scripts/lab.sh" up
fi

# shellcheck source=/dev/null
source "$RUN_DIR/lab.env"
BIN_DIR=$LAB_BIN_DIR
ctl() { timeout 10 "$BIN_DIR/kxdpctl" --control "$RUN_DIR/control.sock" "$@"; }

# A client pod and a server pod on another node, from the lab's plan.
read -r CLIENT_NODE CLIENT_POD < <(jq -r '.[0] | "\(.node) \(.name | split("/") | last)"' "$RUN_DIR/pods.json")
read -r SERVER_NODE SERVER_POD SERVER_IP < <(jq -r --arg n "$CLIENT_NODE" \
    '[.[] | select(.node != $n)][0] | "\(.node) \(.name | split("/") | last) \(.ip)"' "$RUN_DIR/pods.json")
[[ -n $SERVER_IP && $SERVER_IP != null ]] || {
    echo "error: the lab needs pods on two nodes for the demo" >&2
    exit 1
}
CLIENT_NS=$P-$CLIENT_NODE-$CLIENT_POD
SERVER_NS=$P-$SERVER_NODE-$SERVER_POD
mapfile -t KXDP_NODES < <(jq -r '.[] | select(.dataplane == "kxdp") | .name' "$RUN_DIR/nodes.json")

TMP=$(mktemp -d /tmp/kxdp-demo.XXXXXX)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# start_server PORT [iperf3 args]: a one-shot iperf3 server in the server pod.
start_server() {
    local port=$1 i
    shift
    : >"$TMP/server.log"
    ip netns exec "$SERVER_NS" timeout "$LIMIT" iperf3 -s -1 --forceflush -p "$port" "$@" >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 50; i++)); do
        grep -q "Server listening" "$TMP/server.log" && return 0
        sleep 0.1
    done
    cat "$TMP/server.log" >&2
    echo "error: iperf3 server in $SERVER_NS did not start" >&2
    exit 1
}

counters_json() {
    local n
    for n in "${KXDP_NODES[@]}"; do
        ctl counters --node "$n" --json >"$TMP/$n.$1.json"
    done
}

if ((${#KXDP_NODES[@]} > 0)); then
    section "kxdpctl nodes / pods / routes"
    ctl nodes
    echo
    ctl pods
    echo
    ctl routes
    counters_json before
else
    section "every node is a kernel node (flannel-style): no kxdp counters"
fi

section "iperf3: $CLIENT_NS -> $SERVER_NS ($SERVER_IP), ${IPERF_SECONDS}s, TCP"
start_server 5201
ip netns exec "$CLIENT_NS" timeout "$LIMIT" iperf3 -c "$SERVER_IP" -p 5201 -t "$IPERF_SECONDS"
wait "$SERVER_PID" || true

section "10 MiB of random data: $CLIENT_NS -> $SERVER_NS, checked with sha256sum"
# The receiver: Debian's python3 (standard library) hashes what arrives; the
# sender: bash's /dev/tcp.
RECEIVER='import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(20)
c, _ = s.accept()
c.settimeout(20)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(65536)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)'
head -c $((10 << 20)) /dev/urandom >"$TMP/sent"
ip netns exec "$SERVER_NS" timeout "$LIMIT" /usr/bin/python3 -c "$RECEIVER" "$SERVER_IP" 5202 >"$TMP/received" 2>&1 &
SERVER_PID=$!
for ((i = 0; i < 50; i++)); do
    ip netns exec "$SERVER_NS" ss -Htln "sport = :5202" | grep -q . && break
    sleep 0.1
done
# shellcheck disable=SC2016 # expanded by the inner bash
ip netns exec "$CLIENT_NS" timeout "$LIMIT" bash -c 'cat "$0" >"/dev/tcp/$1/5202"' "$TMP/sent" "$SERVER_IP"
wait "$SERVER_PID" || true
read -r got_bytes got_sum <"$TMP/received" || true
sent_sum=$(sha256sum <"$TMP/sent" | cut -d' ' -f1)
echo "sent     $(stat -c %s "$TMP/sent") bytes, sha256 $sent_sum"
echo "received ${got_bytes:-?} bytes, sha256 ${got_sum:-?}"
if [[ ${got_sum:-} != "$sent_sum" ]]; then
    cat "$TMP/received" >&2
    echo "error: the data did not arrive intact" >&2
    exit 1
fi
echo "intact"

if ((${#KXDP_NODES[@]} > 0)); then
    counters_json after
    for n in "${KXDP_NODES[@]}"; do
        section "kxdpctl counters --node $n"
        ctl counters --node "$n"
        echo
        echo "during the demo:"
        jq -rn --slurpfile a "$TMP/$n.after.json" --slurpfile b "$TMP/$n.before.json" '
            ["encapsulated", "decapsulated", "routed_local"][] as $k
            | "  \($k): +\($a[0][$k] - $b[0][$k])"'
    done
fi

section "done"
echo "The lab stays up: scripts/lab.sh status, scripts/lab.sh down"
