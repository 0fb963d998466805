#!/usr/bin/env bash
# packages.sh — the Debian packages of a kxdp node, for any kind of node: a
# Vagrant VM (vagrant/provision/), a bare-metal host, or the machine the
# namespace lab runs on (scripts/lab.sh can call it instead of its own
# kxdp_install_deps call).
#
# The package list is scripts/deps.sh's (the namespace lab's) plus what a node
# outside the namespace lab needs:
#   containernetworking-plugins  host-local, the IPAM plugin kxdp-cni delegates to
#   util-linux                   nsenter (kxdp-cni runs ip/ethtool in pod netns)
#   curl ca-certificates         rustup, when the node builds kxdp itself
#   rsync                        Vagrant's rsync synced folder
# and with --etcd, etcd-server and etcd-client (the node that runs etcd).
#
# Usage: packages.sh [--etcd] [EXTRA_PKG...]     (root; idempotent)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../deps.sh
source "$ROOT/scripts/deps.sh"

extra=(containernetworking-plugins util-linux curl ca-certificates rsync)
for arg in "$@"; do
    case $arg in
        --etcd) extra+=(etcd-server etcd-client) ;;
        -h | --help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "packages.sh: unknown option $arg" >&2
            exit 2
            ;;
        *) extra+=("$arg") ;;
    esac
done

kxdp_install_deps "${extra[@]}"
