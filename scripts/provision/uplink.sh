#!/usr/bin/env bash
# uplink.sh IF — prepares a node's uplink for kxdp-dataplane, as the namespace
# lab prepares its veth uplinks (scripts/lab.sh: tx_off, one queue):
#   - TX checksum offload off: AF_XDP forwards frames as they are, so the
#     frames the kernel sends must carry complete checksums;
#   - one combined queue where the driver allows it: worker i binds queue i,
#     and the units run one worker (raise both together on a multi-queue NIC).
# Steps the driver does not support are reported and skipped: generic XDP
# works whatever the NIC can do. Run in the node's namespace
# (ip netns exec NS uplink.sh IF in a namespace lab). Exit 1 only when IF
# does not exist.
set -uo pipefail

IF=${1:?usage: uplink.sh IF}
QUEUES=${KXDP_UPLINK_QUEUES:-1}

if ! ip link show dev "$IF" >/dev/null 2>&1; then
    echo "uplink.sh: no interface $IF" >&2
    exit 1
fi
ethtool -K "$IF" tx off >/dev/null 2>&1 ||
    echo "uplink.sh: $IF: cannot turn TX checksum offload off (driver); continuing" >&2
if ethtool -l "$IF" >/dev/null 2>&1; then
    ethtool -L "$IF" combined "$QUEUES" >/dev/null 2>&1 ||
        echo "uplink.sh: $IF: cannot set $QUEUES combined queue(s); continuing" >&2
fi
ip link set "$IF" up
