#!/usr/bin/env bash
# lab.sh — a kxdp cluster in network namespaces on this machine.
#
# See `lab.sh --help`. Every name the lab makes starts with KXDP_LAB_PREFIX,
# every process it starts is recorded in a PID file in KXDP_RUN_DIR, and
# `down` removes exactly those, so labs with different prefixes can coexist.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deps.sh
source "$ROOT/scripts/deps.sh"

# Absolute path of $1, relative to the caller's directory.
abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

P=${KXDP_LAB_PREFIX:-kxdp}
RUN_DIR=$(abspath "${KXDP_RUN_DIR:-/run/kxdp/$P}")
CLUSTER=$(abspath "${KXDP_CLUSTER:-$ROOT/config/lab-cluster.yaml}")
BIN_DIR=$(abspath "${KXDP_BIN_DIR:-$ROOT/target/release}")
KERNEL_NODES=${KXDP_KERNEL_NODES:-}
CORES=${KXDP_LAB_CORES:-0 1}
XDP_MODE=${KXDP_XDP_MODE:-}
FLOW_CACHE=${KXDP_FLOW_CACHE:-1}
QUEUES=${KXDP_LAB_QUEUES:-1}
DP_USER=${KXDP_DATAPLANE_USER:-}
DP_CAPS=${KXDP_DATAPLANE_CAPS:-}
export RUST_LOG=${RUST_LOG:-info}

# The underlay is one /24; the outside client takes .100 of it, the router
# to the outside world .254 (every node's default route).
UNDERLAY_PREFIX_LEN=24
EXT_HOST=100
RT_HOST=254
# The outside world behind the router: a documentation range (RFC 5737,
# never routed on the Internet), router .1, the HTTP and DNS server .10.
WWW_NET=203.0.113
WWW_PREFIX_LEN=24
WWW_RT=1
WWW_HOST=10
WWW_HTTP_PORT=80
# The names the outside DNS server answers (A records).
WWW_NAMES=(www.example.test files.example.test)
# The stand-in API server (start_apiserver) and the `kubernetes` service's
# ClusterIP, as kubeadm numbers it: the service CIDR's first address.
API_PORT=6443
# Where each kxdp node's dataplane serves /metrics and /healthz (loopback of
# the node's namespace; 9464 is the usual exporter port).
DP_METRICS_PORT=9464
API_CLUSTER_IP=10.96.0.1
# Seconds to wait for a dataplane's socket and for control to sync every node.
SOCKET_TIMEOUT=20
SYNC_TIMEOUT=30
# Seconds a process gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT=10

usage() {
    cat <<EOF
Usage: lab.sh up|down|status|restart-node NODE [--kill]|restart-control [--kill]|help

A kxdp cluster in network namespaces: a switch, one namespace per node, one
per pod, an outside client, and an outside world behind a router. Needs root.

  up            (re)create the lab from the cluster file and start the
                dataplanes and kxdp-control; tears down an existing lab with
                the same prefix first, and whatever it made if a step fails
  down          stop the lab's processes (from its PID files only), delete its
                namespaces and its run directory; never fails on missing things
  status        what is up; exits 3 when the lab is down
  restart-node NODE [--kill]
                stop NODE's dataplane (SIGTERM, or SIGKILL with --kill), start
                it again as 'up' did, wait until kxdp-control has synced it again
  restart-control [--kill]
                stop kxdp-control (SIGTERM, or SIGKILL), start it again; it
                pushes every node's state once on start, without disturbing
                the dataplanes' established flows, with the pods and services
                added at run time (RUN_DIR/control-state.json; 'up' starts
                without them)

Topology (P = prefix):
  netns P-sw        bridge br0; ports named after the nodes (n1, n2), ext and rt
  netns P-NODE      uplink (eth0) with the node's underlay IP, default route via
                    the router (.$RT_HOST); pod veths kx<hex ip>
  netns P-NODE-POD  eth0 with the pod's IP, MAC and MTU; default route via the gateway
  netns P-ext       eth0 .$EXT_HOST of the underlay /$UNDERLAY_PREFIX_LEN (an outside client)
  netns P-rt        the router: eth0 .$RT_HOST of the underlay (switch port rt), eth1
                    $WWW_NET.$WWW_RT/$WWW_PREFIX_LEN; IP forwarding, no route to the pod CIDRs
                    (pod egress is masqueraded by the nodes)
  netns P-www       eth0 $WWW_NET.$WWW_HOST/$WWW_PREFIX_LEN (the outside world): HTTP :$WWW_HTTP_PORT
                    (scripts/lab-www.py: RUN_DIR/www, /whoami answers the client's address)
                    and DNS :53 (dnsmasq: ${WWW_NAMES[*]} -> $WWW_NET.$WWW_HOST)
A stand-in API server (openssl s_server, TLS) listens on the first node's
underlay address :$API_PORT, as a control-plane node's kube-apiserver does.
A kxdp node runs kxdp-dataplane in its namespace (IP forwarding off, no vxlan
device), with /metrics and /healthz on that namespace's 127.0.0.1:$DP_METRICS_PORT;
kxdp-control serves its own on a free port of 127.0.0.1 in the root namespace
(RUN_DIR/control.metrics holds the address). A kernel node is set up as flannel's VXLAN backend does it: flannel.1,
bridge cni0, a route, neighbour and FDB entry per remote node, and the rules
flannel --ip-masq writes (nftables table flannel-ipv4) from the cluster file's
ip_masq and non_masquerade_cidrs. Nothing leaves the lab's namespaces.

Environment:
  KXDP_LAB_PREFIX   name prefix, letters/digits/_ only (default kxdp)
  KXDP_RUN_DIR      sockets, PID files, logs, plans (default /run/kxdp/PREFIX)
  KXDP_CLUSTER      cluster file (default config/lab-cluster.yaml)
  KXDP_BIN_DIR      where kxdp-dataplane, kxdp-control, kxdpctl are (default target/release)
  KXDP_NO_BUILD=1   skip installing Debian packages and 'cargo build --release --workspace'
  KXDP_KERNEL_NODES nodes served by the Linux kernel, flannel-style, e.g. "n2"
                    (a copy of the cluster file saying 'dataplane: kernel' for them
                    is written to the run dir); all nodes: the kernel baseline
  KXDP_LAB_CORES    cores for the kxdp nodes' dataplanes, one entry per node in
                    order, reused round-robin (default "0 1"); an entry may be a
                    comma list, one core per worker (e.g. "0,1 1,0")
  KXDP_XDP_MODE     native|generic, passed to kxdp-dataplane --xdp-mode (default: its own)
  KXDP_FLOW_CACHE=0 run the dataplanes with --no-flow-cache (every packet takes
                    the full walk; for comparisons)
  KXDP_LAB_QUEUES   RX/TX queues of every veth, 1..8, and so workers per kxdp
                    dataplane (one per queue; default 1). With more than one,
                    either direction of a flow may arrive at any worker: the
                    multi-queue NIC case, where flow steering hands service
                    frames to the worker that owns the flow
  KXDP_DATAPLANE_USER  run the dataplanes as this user (who then owns the run
                    dir), as kxdp-dataplane.service does, with only the
  KXDP_DATAPLANE_CAPS  capabilities listed here (e.g. "net_admin,bpf,net_raw";
                    empty: none), through setpriv
  KXDP_KEEP_ON_FAIL=1  leave a half-made lab in place when 'up' fails (debugging)
  KXDP_LOG, KXDP_LOG_FORMAT  log filter (default info) and format (text|json)
                    of the dataplanes and control (RUST_LOG also works)

Examples:
  sudo scripts/lab.sh up && sudo scripts/demo.sh
  sudo KXDP_KERNEL_NODES="n1 n2" scripts/lab.sh up     # all-kernel baseline
  sudo target/release/kxdpctl --control /run/kxdp/kxdp/control.sock counters --node n1
  sudo scripts/lab.sh down
EOF
}

log() { echo "==> $*"; }
warn() { echo "warning: $*" >&2; }
die() {
    echo "error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- helpers

# alive PID: the process exists and is not a zombie whose threads are all gone.
alive() {
    local stat threads
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]] && return 0
    # A zombie main thread whose other threads still exit holds its
    # sockets (and listening ports) until the last one is gone.
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $threads && $threads -gt 1 ]]
}

# ns_sysctl NS KEY VALUE: writes /proc/sys inside NS (no procps needed).
ns_sysctl() {
    ip netns exec "$1" sh -c "echo $3 > /proc/sys/${2//.//}"
}

# free_port: 127.0.0.1:PORT with a TCP port that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print("127.0.0.1:%d" % s.getsockname()[1])'
}

# ns_add NAME: creates a namespace, records it, loopback up, no IPv6 (the lab
# is IPv4; router solicitations and DAD would only show up as drops).
ns_add() {
    ip netns add "$1"
    echo "$1" >>"$RUN_DIR/namespaces"
    ip -n "$1" link set lo up
    ns_sysctl "$1" net.ipv6.conf.all.disable_ipv6 1 2>/dev/null || true
    ns_sysctl "$1" net.ipv6.conf.default.disable_ipv6 1 2>/dev/null || true
}

# veth NS_A IF_A NS_B IF_B: a veth pair made inside the namespaces (never in
# the root namespace), with $QUEUES TX and RX queues: the dataplane runs one
# worker per queue, each binding an AF_XDP socket on its queue, so every
# queue a frame can arrive on has a socket.
veth() {
    ip -n "$1" link add "$2" numtxqueues "$QUEUES" numrxqueues "$QUEUES" type veth \
        peer name "$4" netns "$3" numtxqueues "$QUEUES" numrxqueues "$QUEUES"
}

# tx_off NS IF [more features]: AF_XDP forwards frames as they are, so a
# frame sent with CHECKSUM_PARTIAL (tx checksum offload) would arrive with a
# wrong checksum: every veth end computes its checksums in software.
tx_off() {
    local ns=$1 ifname=$2
    shift 2
    ip netns exec "$ns" ethtool -K "$ifname" tx off "$@" >/dev/null
}

ctl() {
    timeout 10 "$BIN_DIR/kxdpctl" --control "$RUN_DIR/control.sock" "$@"
}

# The node list from kxdpctl, whether it prints an array or {"nodes": [...]}.
NODES_JQ='(if type == "array" then . else (.nodes // []) end)'

# node_field NODE FIELD: a field of NODE from 'kxdpctl nodes --json' (empty if none).
node_field() {
    ctl nodes --json 2>/dev/null |
        jq -r --arg n "$1" --arg f "$2" "$NODES_JQ"'[] | select(.name == $n) | .[$f] // empty' 2>/dev/null || true
}

tail_logs() {
    local f
    for f in "$RUN_DIR"/*.log; do
        [[ -f $f ]] || continue
        echo "--- last lines of $f" >&2
        tail -n 20 "$f" >&2
    done
}

# stop_pidfile FILE COMM [SIGNAL]: stops the process recorded in FILE if it
# still is COMM (a recycled PID is left alone), then removes FILE.
stop_pidfile() {
    local file=$1 comm=$2 sig=${3:-TERM} pid i
    [[ -f $file ]] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            warn "$comm (pid $pid) did not exit after SIG$sig; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

# start_daemon NAME COMM CMD...: starts CMD in its own session, logging to
# RUN_DIR/NAME.log, and records its PID in RUN_DIR/NAME.pid (the wrapper
# writes its own PID and execs, and `ip netns exec` execs too, so the PID is
# the daemon's).
start_daemon() {
    local name=$1 comm=$2 pid
    shift 2
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN_DIR/$name.pid" "$@" \
        </dev/null >>"$RUN_DIR/$name.log" 2>&1 &
    for ((i = 0; i < 50; i++)); do
        [[ -s $RUN_DIR/$name.pid ]] && break
        sleep 0.1
    done
    pid=$(cat "$RUN_DIR/$name.pid")
    # Give exec a moment, then check that the PID is the daemon.
    sleep 0.2
    if ! alive "$pid"; then
        tail -n 20 "$RUN_DIR/$name.log" >&2 || true
        die "$comm ($name) exited at once; log: $RUN_DIR/$name.log"
    fi
    [[ $(cat "/proc/$pid/comm") == "$comm" ]] ||
        warn "$name.pid: pid $pid is $(cat "/proc/$pid/comm"), expected $comm"
}

wait_socket() {
    local name=$1 sock=$2 pid i
    pid=$(cat "$RUN_DIR/$name.pid")
    for ((i = 0; i < SOCKET_TIMEOUT * 10; i++)); do
        [[ -S $sock ]] && return 0
        if ! alive "$pid"; then
            tail -n 20 "$RUN_DIR/$name.log" >&2 || true
            die "$name exited before creating $sock; log: $RUN_DIR/$name.log"
        fi
        sleep 0.1
    done
    tail -n 20 "$RUN_DIR/$name.log" >&2 || true
    die "$name: no socket $sock after ${SOCKET_TIMEOUT}s; log: $RUN_DIR/$name.log"
}

# wait_synced [NODE OLD_BOOT_ID]: until every kxdp node (or NODE, with a boot
# id other than OLD_BOOT_ID) is "synced" in 'kxdpctl nodes --json'.
wait_synced() {
    local only=${1:-} old_boot=${2:-} deadline json pending n boot
    deadline=$((SECONDS + SYNC_TIMEOUT))
    while :; do
        pending=()
        json=$(ctl nodes --json 2>/dev/null || true)
        for n in "${KXDP_NODES[@]}"; do
            [[ -n $only && $n != "$only" ]] && continue
            if [[ $(jq -r --arg n "$n" "$NODES_JQ"'[] | select(.name == $n) | .status' <<<"$json" 2>/dev/null) != synced ]]; then
                pending+=("$n")
                continue
            fi
            if [[ -n $old_boot ]]; then
                boot=$(jq -r --arg n "$n" "$NODES_JQ"'[] | select(.name == $n) | .boot_id // empty' <<<"$json")
                [[ $boot == "$old_boot" ]] && pending+=("$n")
            fi
        done
        ((${#pending[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            echo "last 'kxdpctl nodes --json': ${json:-<no answer>}" >&2
            tail_logs
            die "kxdp-control did not sync node(s) ${pending[*]} within ${SYNC_TIMEOUT}s"
        fi
        sleep 0.3
    done
}

# ---------------------------------------------------------------- plan

# Node and pod plans, as arrays indexed by node name / pod index.
NODES=() KXDP_NODES=()
declare -A N_UIP N_UPLINK N_CIDR N_GW N_VMAC N_DP N_MTU N_UMTU N_VNI N_PORT
PODS=()
P_NODE=() P_NAME=() P_IP=() P_LEN=() P_GW=() P_MAC=() P_IF=() P_MTU=()

# write_kernel_cluster: RUN_DIR/cluster.yaml, the cluster file with
# 'dataplane: kernel' on the KXDP_KERNEL_NODES (block or flow style entries
# of the top-level `nodes:` list; an existing `dataplane:` is replaced).
write_kernel_cluster() {
    awk -v want=" $KERNEL_NODES " '
        function strip(s) {
            sub(/[[:space:]]*(#.*)?$/, "", s); gsub(/["\047]/, "", s); return s
        }
        /^[^[:space:]#-][^:]*:/ { section = $0; sub(/:.*/, "", section); target = 0 }
        section == "nodes" && /^[[:space:]]*-[[:space:]]*\{/ {
            line = $0; name = line
            sub(/.*name:[[:space:]]*/, "", name); sub(/[,}].*/, "", name); name = strip(name)
            if (index(want, " " name " ")) {
                gsub(/,?[[:space:]]*dataplane:[[:space:]]*[a-z]+/, "", line)
                sub(/\{/, "{ dataplane: kernel,", line)
            }
            print line; target = 0; next
        }
        section == "nodes" && /^[[:space:]]*-[[:space:]]*name:/ {
            print
            name = $0; sub(/^[[:space:]]*-[[:space:]]*name:[[:space:]]*/, "", name); name = strip(name)
            match($0, /name:/); keycol = RSTART - 1
            target = index(want, " " name " ") > 0
            if (target) printf "%" keycol "s%s\n", "", "dataplane: kernel"
            next
        }
        section == "nodes" && /^[[:space:]]*-/ { target = 0 }
        target && /^[[:space:]]*dataplane:/ { next }
        { print }
    ' "$CLUSTER" >"$RUN_DIR/cluster.yaml"
}

make_plan() {
    local cluster=$CLUSTER n
    if [[ -n $KERNEL_NODES ]]; then
        write_kernel_cluster
        cluster=$RUN_DIR/cluster.yaml
    fi
    check_bins kxdpctl
    "$BIN_DIR/kxdpctl" plan-nodes "$cluster" >"$RUN_DIR/nodes.json" ||
        die "kxdpctl plan-nodes $cluster failed"
    "$BIN_DIR/kxdpctl" plan-pods "$cluster" >"$RUN_DIR/pods.json" ||
        die "kxdpctl plan-pods $cluster failed"
    # The generated file must say what KXDP_KERNEL_NODES asked for: kxdp-control
    # reads it too, and must push nothing to a kernel node.
    for n in $KERNEL_NODES; do
        [[ $(jq -r --arg n "$n" '.[] | select(.name == $n) | .dataplane' "$RUN_DIR/nodes.json") == kernel ]] ||
            die "KXDP_KERNEL_NODES: could not mark node '$n' 'dataplane: kernel' in $cluster (is it a node of $CLUSTER?)"
    done
    echo "$cluster" >"$RUN_DIR/cluster-file"
}

load_plan() {
    local name uip uplink cidr gw vmac dp mtu umtu vni port node ip len mac ifname n
    [[ -f $RUN_DIR/nodes.json && -f $RUN_DIR/pods.json ]] || die "no plan in $RUN_DIR"
    while IFS=$'\t' read -r name uip uplink cidr gw vmac dp mtu umtu vni port; do
        [[ $name =~ ^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$ ]] ||
            die "node name '$name': use a DNS label of at most 15 characters (it names a switch port)"
        [[ $name == sw || $name == ext || $name == rt || $name == www ]] &&
            die "node name '$name' is reserved by the lab"
        [[ -n ${N_UIP[$name]:-} ]] && die "node '$name' twice in the plan"
        NODES+=("$name")
        N_UIP[$name]=$uip N_UPLINK[$name]=$uplink N_CIDR[$name]=$cidr N_GW[$name]=$gw
        N_VMAC[$name]=$vmac N_DP[$name]=$dp N_MTU[$name]=$mtu N_UMTU[$name]=$umtu
        N_VNI[$name]=$vni N_PORT[$name]=$port
        case $dp in
            kxdp) KXDP_NODES+=("$name") ;;
            kernel) ;;
            *) die "node '$name': unknown dataplane '$dp'" ;;
        esac
        ((${#uplink} <= 15)) || die "node '$name': uplink name '$uplink' is longer than 15 characters"
    done < <(jq -r '.[] | [.name, .underlay_ip, (.uplink // "eth0"), .pod_cidr, .gateway,
        .vtep_mac, (.dataplane // "kxdp"), .mtu, .underlay_mtu, .vni, .vxlan_port]
        | map(tostring) | @tsv' "$RUN_DIR/nodes.json")
    ((${#NODES[@]} > 0)) || die "the plan has no nodes"
    while IFS=$'\t' read -r node name ip len gw mac ifname mtu; do
        name=${name##*/}
        [[ -n ${N_UIP[$node]:-} ]] || die "pod '$name': unknown node '$node'"
        [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "pod name '$name': letters, digits, -, _ and . only"
        ((${#ifname} <= 15)) || die "pod '$node/$name': interface name '$ifname' is longer than 15 characters"
        for n in "${!P_NAME[@]}"; do
            [[ ${P_NODE[$n]} == "$node" && ${P_NAME[$n]} == "$name" ]] && die "pod '$node/$name' twice in the plan"
        done
        PODS+=("${#PODS[@]}")
        P_NODE+=("$node") P_NAME+=("$name") P_IP+=("$ip") P_LEN+=("$len") P_GW+=("$gw")
        P_MAC+=("$mac") P_IF+=("$ifname") P_MTU+=("$mtu")
    done < <(jq -r '.[] | [.node, .name, .ip, .prefix_len, .gateway, .mac, .ifname, .mtu]
        | map(tostring) | @tsv' "$RUN_DIR/pods.json")
}

# ---------------------------------------------------------------- up

build() {
    if [[ ${KXDP_NO_BUILD:-0} == 1 ]]; then
        return 0
    fi
    # The packages every kxdp node gets (Vagrant VMs run the same script).
    "$ROOT/scripts/provision/packages.sh"
    kxdp_find_cargo
    log "building: cargo build --release --workspace"
    (cd "$ROOT" && "$KXDP_CARGO" build --release --workspace) ||
        die "cargo build --release --workspace failed (KXDP_NO_BUILD=1 uses the binaries already in $BIN_DIR)"
}

# preflight: what can be checked before anything is installed or built.
preflight() {
    [[ $(id -u) -eq 0 ]] || die "lab.sh needs root (namespaces, veths, XDP)"
    [[ $P =~ ^[A-Za-z0-9_]{1,32}$ ]] || die "KXDP_LAB_PREFIX '$P': use 1-32 letters, digits or _"
    [[ $QUEUES =~ ^[1-8]$ ]] || die "KXDP_LAB_QUEUES '$QUEUES': use 1 to 8"
    [[ -f $CLUSTER ]] || die "cluster file $CLUSTER not found"
    if [[ -n $DP_USER ]]; then
        id -u "$DP_USER" >/dev/null 2>&1 || die "KXDP_DATAPLANE_USER '$DP_USER': no such user"
    fi
    [[ $DP_CAPS =~ ^[a-z_,]*$ ]] || die "KXDP_DATAPLANE_CAPS '$DP_CAPS': capability names without cap_, comma-separated"
}

# check_tools: the commands the lab runs; after build(), which installs them.
check_tools() {
    local t
    for t in ip ethtool jq timeout setsid awk; do
        command -v "$t" >/dev/null || die "'$t' not found (scripts/lab.sh up without KXDP_NO_BUILD=1 installs it)"
    done
}

check_bins() {
    local b
    for b in "$@"; do
        [[ -x $BIN_DIR/$b ]] || die "$BIN_DIR/$b not found: build with 'cargo build --release --workspace' or unset KXDP_NO_BUILD"
    done
}

lab_exists() {
    [[ -d $RUN_DIR ]] && return 0
    ip netns list 2>/dev/null | awk -v p="$P-" 'index($1, p) == 1 { found = 1 } END { exit !found }'
}

make_underlay() {
    local net=${N_UIP[${NODES[0]}]%.*} n
    log "switch $P-sw (bridge br0) and outside client $P-ext ($net.$EXT_HOST)"
    ns_add "$P-sw"
    ip -n "$P-sw" link add br0 type bridge
    ip -n "$P-sw" link set br0 up
    for n in "${NODES[@]}"; do
        ns_add "$P-$n"
        veth "$P-sw" "$n" "$P-$n" "${N_UPLINK[$n]}"
        ip -n "$P-sw" link set "$n" mtu "${N_UMTU[$n]}" master br0 up
        tx_off "$P-sw" "$n"
        ip -n "$P-$n" link set "${N_UPLINK[$n]}" mtu "${N_UMTU[$n]}" up
        ip -n "$P-$n" addr add "${N_UIP[$n]}/$UNDERLAY_PREFIX_LEN" dev "${N_UPLINK[$n]}"
        # The same uplink preparation a VM or bare-metal node gets (Vagrant).
        ip netns exec "$P-$n" "$ROOT/scripts/provision/uplink.sh" "${N_UPLINK[$n]}" >/dev/null
        # As a real node has: the way out is the underlay's router.
        ip -n "$P-$n" route add default via "$net.$RT_HOST" dev "${N_UPLINK[$n]}"
    done
    underlay_host ext "$net.$EXT_HOST"
}

# underlay_host NAME IP: namespace P-NAME on the switch's port NAME, eth0
# with IP on the underlay, software checksums on both ends.
underlay_host() {
    local name=$1 ip=$2 mtu=${N_UMTU[${NODES[0]}]}
    ns_add "$P-$name"
    veth "$P-sw" "$name" "$P-$name" eth0
    ip -n "$P-sw" link set "$name" mtu "$mtu" master br0 up
    tx_off "$P-sw" "$name"
    ip -n "$P-$name" link set eth0 mtu "$mtu" up
    ip -n "$P-$name" addr add "$ip/$UNDERLAY_PREFIX_LEN" dev eth0
    tx_off "$P-$name" eth0
}

# make_world: the router on the underlay and the outside world behind it.
# Every end gets software checksums (tx_off): frames the router forwards
# from the world to a kxdp node must arrive complete, as from a real NIC.
make_world() {
    local net=${N_UIP[${NODES[0]}]%.*} mtu=${N_UMTU[${NODES[0]}]}
    log "router $P-rt ($net.$RT_HOST, $WWW_NET.$WWW_RT) and outside world $P-www ($WWW_NET.$WWW_HOST)"
    underlay_host rt "$net.$RT_HOST"
    ns_sysctl "$P-rt" net.ipv4.ip_forward 1
    ns_add "$P-www"
    veth "$P-rt" eth1 "$P-www" eth0
    ip -n "$P-rt" link set eth1 mtu "$mtu" up
    ip -n "$P-rt" addr add "$WWW_NET.$WWW_RT/$WWW_PREFIX_LEN" dev eth1
    tx_off "$P-rt" eth1
    ip -n "$P-www" link set eth0 mtu "$mtu" up
    ip -n "$P-www" addr add "$WWW_NET.$WWW_HOST/$WWW_PREFIX_LEN" dev eth0
    ip -n "$P-www" route add default via "$WWW_NET.$WWW_RT" dev eth0
    tx_off "$P-www" eth0
}

# start_world: the outside world's HTTP server (files from RUN_DIR/www) and
# DNS server, each recorded in a PID file and logging every client.
start_world() {
    local www=$WWW_NET.$WWW_HOST name records=()
    mkdir -p "$RUN_DIR/www"
    echo "kxdp lab $P: the outside world" >"$RUN_DIR/www/index.html"
    start_daemon www-http python3 ip netns exec "$P-www" /usr/bin/python3 \
        "$ROOT/scripts/lab-www.py" "$www" "$WWW_HTTP_PORT" "$RUN_DIR/www"
    for name in "${WWW_NAMES[@]}"; do
        records+=("--host-record=$name,$www")
    done
    # No configuration file, no PID file, no upstream: only these names.
    start_daemon www-dns dnsmasq ip netns exec "$P-www" dnsmasq --keep-in-foreground \
        --conf-file=/dev/null --pid-file= --no-resolv --no-hosts --bind-interfaces \
        --listen-address="$www" --user=nobody --group=nogroup --log-queries --log-facility=- \
        "${records[@]}"
}

# start_apiserver: a stand-in for the cluster's API server, TLS on the
# first node's underlay address :$API_PORT (openssl s_server -www answers any
# GET with its status page), with a self-signed certificate for the
# `kubernetes` service's ClusterIP; services may point at it.
start_apiserver() {
    local n=${NODES[0]}
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=kube-apiserver \
        -addext "subjectAltName=IP:$API_CLUSTER_IP,IP:${N_UIP[$n]}" \
        -keyout "$RUN_DIR/apiserver.key" -out "$RUN_DIR/apiserver.crt" 2>/dev/null ||
        die "openssl could not make the API server's certificate"
    start_daemon apiserver openssl ip netns exec "$P-$n" openssl s_server -quiet -www \
        -accept "${N_UIP[$n]}:$API_PORT" -cert "$RUN_DIR/apiserver.crt" -key "$RUN_DIR/apiserver.key"
}

# kernel_masq NODE: what flannel --ip-masq writes (nftables mode: table
# flannel-ipv4, chains forward and postrtg, pkg/trafficmngr/nftables), with
# ip-masq-agent's non-masquerade destinations returned before the pods'
# masquerade rule. ip_masq false: the forward chain only, as flannel
# without --ip-masq.
kernel_masq() {
    local n=$1 cluster masq cidrs pod=${N_CIDR[$1]}
    IFS=$'\t' read -r cluster masq cidrs < <(jq -r --arg n "$n" '.[] | select(.name == $n)
        | [.cluster_cidr, (if .ip_masq == null then true else .ip_masq end),
           ((.non_masquerade_cidrs // []) | join(", "))] | map(tostring) | @tsv' "$RUN_DIR/nodes.json")
    log "node $n: flannel's rules (ip_masq $masq${cidrs:+, non-masquerade $cidrs})"
    {
        echo "table ip flannel-ipv4 {"
        echo "  chain forward {"
        echo "    type filter hook forward priority filter; policy accept;"
        echo "    ip saddr $cluster accept"
        echo "    ip daddr $cluster accept"
        echo "  }"
        if [[ $masq == true ]]; then
            echo "  chain postrtg {"
            echo "    type nat hook postrouting priority srcnat; policy accept;"
            echo "    meta mark 0x4000 return"
            echo "    ip saddr $pod ip daddr $cluster return"
            echo "    ip saddr $cluster ip daddr $pod return"
            echo "    ip saddr != $pod ip daddr $cluster return"
            [[ -n $cidrs ]] && echo "    ip saddr $cluster ip daddr { $cidrs } return"
            echo "    ip saddr $cluster ip daddr != 224.0.0.0/4 masquerade fully-random"
            echo "    ip saddr != $cluster ip daddr $cluster masquerade fully-random"
            echo "  }"
        fi
        echo "}"
    } >"$RUN_DIR/$n-flannel.nft"
    ip netns exec "$P-$n" nft -f "$RUN_DIR/$n-flannel.nft"
}

make_pods() {
    local i node ns
    for i in "${PODS[@]}"; do
        node=${P_NODE[$i]}
        ns=$P-$node-${P_NAME[$i]}
        log "pod $node/${P_NAME[$i]}: netns $ns, ${P_IP[$i]}/${P_LEN[$i]}, node veth ${P_IF[$i]}"
        ns_add "$ns"
        veth "$P-$node" "${P_IF[$i]}" "$ns" eth0
        ip -n "$P-$node" link set "${P_IF[$i]}" mtu "${P_MTU[$i]}" up
        tx_off "$P-$node" "${P_IF[$i]}"
        ip -n "$ns" link set eth0 address "${P_MAC[$i]}" mtu "${P_MTU[$i]}" up
        ip -n "$ns" addr add "${P_IP[$i]}/${P_LEN[$i]}" dev eth0
        ip -n "$ns" route add default via "${P_GW[$i]}" dev eth0
        tx_off "$ns" eth0 tso off gso off
    done
}

# A kernel node, as flannel's VXLAN backend sets one up.
make_kernel_node() {
    local n=$1 ns=$P-$1 r i len
    log "node $n: kernel (flannel.1 VXLAN id ${N_VNI[$n]} port ${N_PORT[$n]}, bridge cni0 ${N_GW[$n]})"
    ns_sysctl "$ns" net.ipv4.ip_forward 1
    ip -n "$ns" link add flannel.1 type vxlan id "${N_VNI[$n]}" local "${N_UIP[$n]}" \
        dev "${N_UPLINK[$n]}" dstport "${N_PORT[$n]}" nolearning
    ip -n "$ns" link set flannel.1 address "${N_VMAC[$n]}" mtu "${N_MTU[$n]}" up
    ip -n "$ns" addr add "${N_CIDR[$n]%/*}/32" dev flannel.1
    len=${N_CIDR[$n]#*/}
    ip -n "$ns" link add cni0 type bridge
    ip -n "$ns" link set cni0 mtu "${N_MTU[$n]}" up
    ip -n "$ns" addr add "${N_GW[$n]}/$len" dev cni0
    for i in "${PODS[@]}"; do
        [[ ${P_NODE[$i]} == "$n" ]] && ip -n "$ns" link set "${P_IF[$i]}" master cni0
    done
    for r in "${NODES[@]}"; do
        [[ $r == "$n" ]] && continue
        ip -n "$ns" route add "${N_CIDR[$r]}" via "${N_CIDR[$r]%/*}" dev flannel.1 onlink
        ip -n "$ns" neigh replace "${N_CIDR[$r]%/*}" lladdr "${N_VMAC[$r]}" dev flannel.1 nud permanent
        bridge -n "$ns" fdb append "${N_VMAC[$r]}" dev flannel.1 dst "${N_UIP[$r]}"
    done
    kernel_masq "$n"
}

# as_dataplane_user: the command prefix that runs a dataplane as
# KXDP_DATAPLANE_USER with exactly KXDP_DATAPLANE_CAPS (inheritable, ambient,
# so nft, which it runs, has them too, and bounding), as its systemd unit
# does; nothing without KXDP_DATAPLANE_USER.
as_dataplane_user() {
    DP_PREFIX=()
    [[ -n $DP_USER ]] || return 0
    local caps=-all
    [[ -n $DP_CAPS ]] && caps+=,+${DP_CAPS//,/,+}
    DP_PREFIX=(setpriv --reuid "$DP_USER" --regid "$DP_USER" --clear-groups
            --inh-caps "$caps" --ambient-caps "$caps" --bounding-set "$caps" --)
}

start_dataplane() {
    local n=$1 args=()
    mapfile -t args <"$RUN_DIR/$n.args"
    rm -f "$RUN_DIR/$n.sock"
    as_dataplane_user
    start_daemon "$n" kxdp-dataplane ip netns exec "$P-$n" "${DP_PREFIX[@]}" \
        "$BIN_DIR/kxdp-dataplane" "${args[@]}"
    wait_socket "$n" "$RUN_DIR/$n.sock"
}

# make_host_interface NODE: the host veth pair (walk 5). The dataplane owns
# one end; the node kernel's end carries the pod gateway address, and its
# routes to the cluster and service CIDRs go through it (kubelet probes, host
# processes reaching pods and ClusterIPs).
make_host_interface() {
    local n=$1 ns=$P-$1 ours peer cluster svc
    IFS=$'\t' read -r ours peer cluster svc < <(jq -r --arg n "$n" \
        '.[] | select(.name == $n) | [.host_interface, .host_peer, .cluster_cidr, .service_cidr] | map(tostring) | @tsv' \
        "$RUN_DIR/nodes.json")
    [[ -n $ours && $ours != null ]] || return 0
    veth "$ns" "$ours" "$ns" "$peer"
    tx_off "$ns" "$ours"
    tx_off "$ns" "$peer" tso off gso off
    ip -n "$ns" link set "$ours" up
    ip -n "$ns" addr add "${N_GW[$n]}/32" dev "$peer"
    ip -n "$ns" link set "$peer" up
    ip -n "$ns" route add "$cluster" dev "$peer" src "${N_GW[$n]}"
    [[ -n $svc && $svc != null ]] && ip -n "$ns" route add "$svc" dev "$peer" src "${N_GW[$n]}"
    return 0
}

make_kxdp_node() {
    local n=$1 core=$2 ns=$P-$1 args
    log "node $n: kxdp (dataplane: $QUEUES worker(s) on core $core${XDP_MODE:+, xdp mode $XDP_MODE})"
    ns_sysctl "$ns" net.ipv4.ip_forward 0
    make_host_interface "$n"
    args=(--node "$n" --socket "$RUN_DIR/$n.sock" --workers "$QUEUES" --cores "$core"
        --metrics-address "127.0.0.1:$DP_METRICS_PORT")
    [[ -n $XDP_MODE ]] && args+=(--xdp-mode "$XDP_MODE")
    [[ $FLOW_CACHE == 0 ]] && args+=(--no-flow-cache)
    printf '%s\n' "${args[@]}" >"$RUN_DIR/$n.args"
    start_dataplane "$n"
}

start_control() {
    log "kxdp-control: $RUN_DIR/control.sock"
    rm -f "$RUN_DIR/control.sock"
    # A port of its own (labs run side by side in the root namespace), kept
    # across restart-control.
    [[ -s $RUN_DIR/control.metrics ]] || free_port >"$RUN_DIR/control.metrics"
    start_daemon control kxdp-control "$BIN_DIR/kxdp-control" \
        --cluster "$(cat "$RUN_DIR/cluster-file")" --state-file "$RUN_DIR/control-state.json" \
        --listen "$RUN_DIR/control.sock" --dataplane-dir "$RUN_DIR" \
        --metrics-address "$(cat "$RUN_DIR/control.metrics")"
    wait_socket control "$RUN_DIR/control.sock"
    log "waiting for kxdp-control to sync ${KXDP_NODES[*]} (up to ${SYNC_TIMEOUT}s)"
    wait_synced
}

up_failed() {
    local rc=$?
    trap - EXIT
    ((rc == 0)) && rc=1
    echo "error: lab.sh up failed (exit $rc)" >&2
    tail_logs
    if [[ ${KXDP_KEEP_ON_FAIL:-0} == 1 ]]; then
        echo "KXDP_KEEP_ON_FAIL=1: leaving the lab in place; remove it with 'lab.sh down'" >&2
    else
        echo "tearing down what was made" >&2
        lab_down >&2
    fi
    exit "$rc"
}

summary() {
    local n i a b ctlcmd
    echo
    echo "kxdp lab '$P' is up (run dir $RUN_DIR)"
    echo "  switch    netns $P-sw, bridge br0, ports: ${NODES[*]} ext rt"
    echo "  outside   netns $P-ext, eth0 ${N_UIP[${NODES[0]}]%.*}.$EXT_HOST/$UNDERLAY_PREFIX_LEN"
    echo "  router    netns $P-rt, eth0 ${N_UIP[${NODES[0]}]%.*}.$RT_HOST/$UNDERLAY_PREFIX_LEN (every node's default route), eth1 $WWW_NET.$WWW_RT/$WWW_PREFIX_LEN"
    echo "  apiserver openssl s_server on ${N_UIP[${NODES[0]}]}:$API_PORT in $P-${NODES[0]} (pid $(cat "$RUN_DIR/apiserver.pid"), certificate $RUN_DIR/apiserver.crt)"
    echo "  world     netns $P-www, eth0 $WWW_NET.$WWW_HOST/$WWW_PREFIX_LEN: http://$WWW_NET.$WWW_HOST/ (pid $(cat "$RUN_DIR/www-http.pid"), files $RUN_DIR/www), DNS :53 ${WWW_NAMES[*]} (dnsmasq pid $(cat "$RUN_DIR/www-dns.pid"))"
    for n in "${NODES[@]}"; do
        if [[ ${N_DP[$n]} == kxdp ]]; then
            printf '  node %-4s netns %s, %s %s/%s, pods %s (gw %s), kxdp: pid %s, socket %s, log %s\n' \
                "$n" "$P-$n" "${N_UPLINK[$n]}" "${N_UIP[$n]}" "$UNDERLAY_PREFIX_LEN" "${N_CIDR[$n]}" "${N_GW[$n]}" \
                "$(cat "$RUN_DIR/$n.pid")" "$RUN_DIR/$n.sock" "$RUN_DIR/$n.log"
        else
            printf '  node %-4s netns %s, %s %s/%s, pods %s (gw %s on cni0), kernel: flannel.1 VNI %s port %s\n' \
                "$n" "$P-$n" "${N_UPLINK[$n]}" "${N_UIP[$n]}" "$UNDERLAY_PREFIX_LEN" "${N_CIDR[$n]}" "${N_GW[$n]}" \
                "${N_VNI[$n]}" "${N_PORT[$n]}"
        fi
    done
    for i in "${PODS[@]}"; do
        printf '  pod  %-8s netns %s, eth0 %s/%s mac %s mtu %s, node veth %s\n' \
            "${P_NODE[$i]}/${P_NAME[$i]}" "$P-${P_NODE[$i]}-${P_NAME[$i]}" "${P_IP[$i]}" "${P_LEN[$i]}" \
            "${P_MAC[$i]}" "${P_MTU[$i]}" "${P_IF[$i]}"
    done
    if ((${#KXDP_NODES[@]} > 0)); then
        echo "  control   pid $(cat "$RUN_DIR/control.pid"), socket $RUN_DIR/control.sock, log $RUN_DIR/control.log, metrics http://$(cat "$RUN_DIR/control.metrics")/metrics"
    fi
    # A pod pair on different nodes, for the examples.
    a='' b=''
    for i in "${PODS[@]}"; do
        [[ -z $a ]] && a=$i && continue
        [[ ${P_NODE[$i]} != "${P_NODE[$a]}" ]] && b=$i && break
    done
    echo
    echo "Try:"
    if [[ -n $b ]]; then
        echo "  ip netns exec $P-${P_NODE[$b]}-${P_NAME[$b]} timeout 30 iperf3 -s -1 &"
        echo "  ip netns exec $P-${P_NODE[$a]}-${P_NAME[$a]} timeout 20 iperf3 -c ${P_IP[$b]} -t 3"
    fi
    if ((${#KXDP_NODES[@]} > 0)); then
        ctlcmd="$BIN_DIR/kxdpctl --control $RUN_DIR/control.sock"
        echo "  $ctlcmd nodes"
        echo "  $ctlcmd counters --node ${KXDP_NODES[0]}"
        echo "  ip netns exec $P-${KXDP_NODES[0]} curl -s 127.0.0.1:$DP_METRICS_PORT/metrics   # or /healthz"
        echo "  curl -s $(cat "$RUN_DIR/control.metrics")/healthz"
    fi
    echo "  $0 status | down"
}

lab_up() {
    preflight
    build
    check_tools
    if lab_exists; then
        log "lab '$P' exists: tearing it down first"
        lab_down
    fi
    mkdir -p "$RUN_DIR"
    # A dataplane run as a user creates its socket here (and makes it 0700).
    [[ -z $DP_USER ]] || chown "$DP_USER:" "$RUN_DIR"
    : >"$RUN_DIR/namespaces"
    trap up_failed EXIT
    {
        printf 'LAB_PREFIX=%q\n' "$P"
        printf 'LAB_BIN_DIR=%q\n' "$BIN_DIR"
        printf 'LAB_CLUSTER=%q\n' "$CLUSTER"
        printf 'LAB_KERNEL_NODES=%q\n' "$KERNEL_NODES"
        printf 'LAB_XDP_MODE=%q\n' "$XDP_MODE"
        printf 'LAB_QUEUES=%q\n' "$QUEUES"
    } >"$RUN_DIR/lab.env"
    log "lab '$P': plan from $CLUSTER${KERNEL_NODES:+ (kernel nodes: $KERNEL_NODES)}"
    make_plan
    load_plan
    ((${#KXDP_NODES[@]} == 0)) || check_bins kxdp-dataplane kxdp-control kxdpctl
    printf 'LAB_ROUTER=%q\nLAB_WWW=%q\n' "${N_UIP[${NODES[0]}]%.*}.$RT_HOST" "$WWW_NET.$WWW_HOST" >>"$RUN_DIR/lab.env"
    make_underlay
    make_world
    start_world
    start_apiserver
    make_pods
    local n k=0 cores
    read -ra cores <<<"$CORES"
    ((${#cores[@]} > 0)) || die "KXDP_LAB_CORES is empty"
    for n in "${NODES[@]}"; do
        if [[ ${N_DP[$n]} == kernel ]]; then
            make_kernel_node "$n"
        else
            make_kxdp_node "$n" "${cores[k % ${#cores[@]}]}"
            k=$((k + 1))
        fi
    done
    if ((${#KXDP_NODES[@]} > 0)); then
        # A new lab starts from its cluster file alone; restart-control keeps it.
        rm -f "$RUN_DIR/control-state.json"
        start_control
    else
        log "every node is a kernel node: kxdp-control not started"
    fi
    trap - EXIT
    summary
}

# ---------------------------------------------------------------- down

lab_down() {
    local f ns names=()
    stop_pidfile "$RUN_DIR/control.pid" kxdp-control
    stop_pidfile "$RUN_DIR/www-http.pid" python3
    stop_pidfile "$RUN_DIR/www-dns.pid" dnsmasq
    stop_pidfile "$RUN_DIR/apiserver.pid" openssl
    for f in "$RUN_DIR"/*.pid; do
        [[ -f $f ]] && stop_pidfile "$f" kxdp-dataplane
    done
    if [[ -f $RUN_DIR/namespaces ]]; then
        mapfile -t names <"$RUN_DIR/namespaces"
    fi
    while read -r ns _; do
        [[ $ns == "$P-"* ]] && names+=("$ns")
    done < <(ip netns list 2>/dev/null || true)
    for ns in "${names[@]}"; do
        if [[ -n $ns ]]; then ip netns del "$ns" 2>/dev/null || true; fi
    done
    if [[ -d $RUN_DIR ]]; then
        # Only the files the lab writes: KXDP_RUN_DIR may be any directory.
        rm -f "$RUN_DIR"/*.pid "$RUN_DIR"/*.sock "$RUN_DIR"/*.log "$RUN_DIR"/*.args \
            "$RUN_DIR"/nodes.json "$RUN_DIR"/pods.json "$RUN_DIR"/cluster.yaml \
            "$RUN_DIR"/cluster-file "$RUN_DIR"/namespaces "$RUN_DIR"/lab.env "$RUN_DIR"/*-flannel.nft \
            "$RUN_DIR"/apiserver.crt "$RUN_DIR"/apiserver.key \
            "$RUN_DIR"/control-state.json "$RUN_DIR"/control.metrics
        rm -rf "$RUN_DIR/www"
        rmdir "$RUN_DIR" 2>/dev/null || warn "$RUN_DIR not empty: left in place"
    fi
    rmdir "$(dirname "$RUN_DIR")" 2>/dev/null || true
    echo "lab '$P' is down"
}

# ---------------------------------------------------------------- status

lab_status() {
    if ! lab_exists; then
        echo "lab '$P': down"
        exit 3
    fi
    local f name pid state
    echo "lab '$P': run dir $RUN_DIR"
    if [[ -f $RUN_DIR/lab.env ]]; then
        # shellcheck source=/dev/null
        source "$RUN_DIR/lab.env"
        BIN_DIR=$LAB_BIN_DIR
        echo "  cluster file: $LAB_CLUSTER${LAB_KERNEL_NODES:+, kernel nodes: $LAB_KERNEL_NODES}"
        if [[ -n ${LAB_WWW:-} ]]; then
            echo "  outside world: router $P-rt ${LAB_ROUTER:-} (every node's default route);" \
                "$P-www $LAB_WWW: http://$LAB_WWW/ (files $RUN_DIR/www, /whoami), DNS $LAB_WWW:53 (${WWW_NAMES[*]})"
        fi
    fi
    echo "  namespaces:"
    ip netns list | awk -v p="$P-" 'index($1, p) == 1 {print "    " $1}' | sort
    echo "  processes:"
    for f in "$RUN_DIR"/*.pid; do
        [[ -f $f ]] || continue
        name=$(basename "$f" .pid)
        pid=$(cat "$f")
        if alive "$pid"; then state=running; else state=DEAD; fi
        printf '    %-8s pid %-8s %s  (log %s)\n' "$name" "$pid" "$state" "$RUN_DIR/$name.log"
    done
    if [[ -S $RUN_DIR/control.sock && -x $BIN_DIR/kxdpctl ]]; then
        echo "  kxdpctl nodes:"
        ctl nodes 2>&1 | sed 's/^/    /' || true
    fi
}

# ---------------------------------------------------------------- restart-node

restart_node() {
    local n=${1:-} sig=TERM old_boot
    [[ -n $n ]] || die "usage: lab.sh restart-node NODE [--kill]"
    [[ ${2:-} == --kill ]] && sig=KILL
    [[ $(id -u) -eq 0 ]] || die "lab.sh needs root"
    [[ -f $RUN_DIR/lab.env ]] || die "lab '$P' is not up (no $RUN_DIR/lab.env)"
    # shellcheck source=/dev/null
    source "$RUN_DIR/lab.env"
    BIN_DIR=$LAB_BIN_DIR
    [[ -f $RUN_DIR/$n.args ]] || die "'$n' is not a kxdp node of lab '$P'"
    load_plan
    old_boot=$(node_field "$n" boot_id)
    log "node $n: stopping kxdp-dataplane (SIG$sig)"
    stop_pidfile "$RUN_DIR/$n.pid" kxdp-dataplane "$sig"
    log "node $n: starting kxdp-dataplane"
    start_dataplane "$n"
    log "waiting for kxdp-control to sync $n again (up to ${SYNC_TIMEOUT}s)"
    wait_synced "$n" "$old_boot"
    echo "node $n: dataplane pid $(cat "$RUN_DIR/$n.pid"), synced"
}

restart_control() {
    local sig=TERM
    [[ ${1:-} == --kill ]] && sig=KILL
    [[ $(id -u) -eq 0 ]] || die "lab.sh needs root"
    [[ -f $RUN_DIR/lab.env ]] || die "lab '$P' is not up (no $RUN_DIR/lab.env)"
    # shellcheck source=/dev/null
    source "$RUN_DIR/lab.env"
    BIN_DIR=$LAB_BIN_DIR
    load_plan
    ((${#KXDP_NODES[@]} > 0)) || die "lab '$P' has no kxdp nodes, so no kxdp-control"
    log "stopping kxdp-control (SIG$sig)"
    stop_pidfile "$RUN_DIR/control.pid" kxdp-control "$sig"
    start_control
    echo "kxdp-control: pid $(cat "$RUN_DIR/control.pid"), every node synced"
}

# ---------------------------------------------------------------- main

[[ $(id -u) -ne 0 ]] || kxdp_in_mounted_root "$ROOT/scripts/lab.sh" "$@"
case ${1:-help} in
    up) lab_up ;;
    down)
        [[ $(id -u) -eq 0 ]] || die "lab.sh needs root"
        lab_down
        ;;
    status) lab_status ;;
    restart-node)
        shift
        restart_node "$@"
        ;;
    restart-control)
        shift
        restart_control "$@"
        ;;
    help | -h | --help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
