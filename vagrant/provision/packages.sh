#!/usr/bin/env bash
# Vagrant provisioner "packages": the node's Debian packages, through the
# shared scripts/provision/packages.sh (the namespace lab's package list plus
# a node's extras). Args: --etcd on the etcd node.
set -euo pipefail
SRC=${KXDP_SRC:-/kxdp}
[[ -x $SRC/scripts/provision/packages.sh ]] || {
    echo "error: $SRC/scripts/provision/packages.sh missing: is the repository synced to $SRC? (vagrant rsync)" >&2
    exit 1
}
export DEBIAN_FRONTEND=noninteractive
"$SRC/scripts/provision/packages.sh" "$@"
