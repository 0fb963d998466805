#!/usr/bin/env bash
# cni-config.sh NODE — writes this node's CNI network configuration
# (/etc/cni/net.d/10-kxdp.conflist) from the template config/10-kxdp.conflist:
# the node's name, its pod CIDR as host-local's range, the first host as the
# gateway, the pod MTU.
#
# The pod CIDR is --pod-cidr, or asked from kxdp-control ('kxdpctl --json
# nodes'), waiting up to --wait seconds: with the etcd store a node's pod
# CIDR is a lease its control process takes at start, known only then (the
# way flannel writes /run/flannel/subnet.env for its CNI plugin).
#
# Options: --pod-cidr CIDR  --mtu MTU (default 1450)  --control SOCK
#          --out FILE (default /etc/cni/net.d/10-kxdp.conflist)  --wait SECONDS (default 120)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TEMPLATE=$ROOT/config/10-kxdp.conflist

NODE=${1:?usage: cni-config.sh NODE [--pod-cidr CIDR] [--mtu MTU] [--control SOCK] [--out FILE] [--wait S]}
shift
CIDR='' MTU=1450 CONTROL=${KXDP_CONTROL_SOCKET:-/run/kxdp/control.sock}
OUT=/etc/cni/net.d/10-kxdp.conflist WAIT=120
KXDPCTL=${KXDPCTL:-kxdpctl}
while (($#)); do
    case $1 in
        --pod-cidr) CIDR=$2 ;;
        --mtu) MTU=$2 ;;
        --control) CONTROL=$2 ;;
        --out) OUT=$2 ;;
        --wait) WAIT=$2 ;;
        *)
            echo "cni-config.sh: unknown argument $1" >&2
            exit 2
            ;;
    esac
    shift 2
done

if [[ -z $CIDR ]]; then
    deadline=$((SECONDS + WAIT))
    while :; do
        CIDR=$("$KXDPCTL" --control "$CONTROL" --json nodes 2>/dev/null |
            jq -r --arg n "$NODE" '(if type == "array" then . else (.nodes // []) end)[]
                | select(.name == $n) | .pod_cidr // empty' 2>/dev/null || true)
        [[ -n $CIDR ]] && break
        if ((SECONDS >= deadline)); then
            echo "cni-config.sh: kxdp-control at $CONTROL gave no pod CIDR for node $NODE within ${WAIT}s" >&2
            exit 1
        fi
        sleep 1
    done
fi

# CIDR -> gateway (first host), in 32-bit arithmetic.
if ! [[ $CIDR =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)/([0-9]+)$ ]]; then
    echo "cni-config.sh: pod CIDR '$CIDR' is not a.b.c.d/len" >&2
    exit 1
fi
len=${BASH_REMATCH[5]}
if ((len > 30)); then
    echo "cni-config.sh: pod CIDR $CIDR has no room for a gateway and pods" >&2
    exit 1
fi
n=$(((BASH_REMATCH[1] << 24 | BASH_REMATCH[2] << 16 | BASH_REMATCH[3] << 8 | BASH_REMATCH[4]) & ~((1 << (32 - len)) - 1) & 0xffffffff))
net="$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))/$len"
g=$((n + 1))
gw="$((g >> 24 & 255)).$((g >> 16 & 255)).$((g >> 8 & 255)).$((g & 255))"

mkdir -p "$(dirname "$OUT")"
jq --arg node "$NODE" --arg subnet "$net" --arg gw "$gw" --argjson mtu "$MTU" --arg sock "$CONTROL" '
    .plugins[0].node = $node
    | .plugins[0].mtu = $mtu
    | .plugins[0].controlSocket = $sock
    | .plugins[0].ipam.ranges = [[{subnet: $subnet, gateway: $gw}]]' "$TEMPLATE" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "==> $OUT: node $NODE, pods $net via $gw, MTU $MTU"
