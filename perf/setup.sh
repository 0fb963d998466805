#!/usr/bin/env bash
# perf/setup.sh — Debian packages the perf tools need beyond the project's
# build and lab packages (scripts/deps.sh): DPDK's testpmd with the AF_XDP
# PMD (the I/O ceiling), nft for the kernel baseline's kube-proxy rules
# (kernel/kube-proxy.nft), iptables and ipset for the kernel baseline's
# network policy (kernel/calico-policy.iptables: the rules and ipsets
# Calico's iptables mode writes; iptables-nft, xt_set) and a TrueType font
# for the report's plot.
# Installs only what is missing; needs root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/deps.sh
source "$ROOT/scripts/deps.sh"
kxdp_install_deps dpdk dpdk-dev librte-net-af-xdp23 fonts-dejavu-core util-linux nftables \
    iptables ipset
