#!/usr/bin/env bash
# install-kxdp.sh — put kxdp's binaries where the systemd units and the
# container runtime look for them:
#   /usr/local/bin/{kxdp-dataplane,kxdp-control,kxdpctl,kxdp-pktgen,kxdp-bench}
#   /usr/lib/cni/kxdp-cni   (next to host-local; CNI_PATH)
#
# Takes the release binaries from KXDP_BIN_DIR (default <repo>/target/release)
# when they are all there (built on the host and synced in), else builds them
# with 'cargo build --release' in the repository (rustup is installed for root
# if there is no cargo). KXDP_BUILD=1 always builds.
#
# Usage: install-kxdp.sh         (root; run packages.sh first)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../deps.sh
source "$ROOT/scripts/deps.sh"

BIN_DIR=${KXDP_BIN_DIR:-$ROOT/target/release}
PREFIX=${KXDP_PREFIX:-/usr/local}
CNI_DIR=${KXDP_CNI_DIR:-/usr/lib/cni}
REQUIRED=(kxdp-dataplane kxdp-control kxdpctl kxdp-cni)
OPTIONAL=(kxdp-pktgen kxdp-bench)

log() { echo "==> $*"; }

have_all() {
    local b
    for b in "${REQUIRED[@]}"; do
        [[ -x $BIN_DIR/$b ]] || return 1
    done
}

build() {
    if ! kxdp_find_cargo 2>/dev/null; then
        log "no cargo: installing Rust with rustup (minimal profile) for $(id -un)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal --no-modify-path
        kxdp_find_cargo
    fi
    log "building kxdp: cargo build --release --workspace (in $ROOT)"
    (cd "$ROOT" && "$KXDP_CARGO" build --release --workspace)
    BIN_DIR=$ROOT/target/release
}

if [[ ${KXDP_BUILD:-0} == 1 ]] || ! have_all; then
    build
else
    log "using the binaries in $BIN_DIR"
fi
have_all || {
    echo "error: $BIN_DIR lacks one of ${REQUIRED[*]}" >&2
    exit 1
}

install -d "$PREFIX/bin" "$CNI_DIR"
for b in kxdp-dataplane kxdp-control kxdpctl "${OPTIONAL[@]}"; do
    [[ -x $BIN_DIR/$b ]] || continue
    install -m 0755 "$BIN_DIR/$b" "$PREFIX/bin/$b"
done
install -m 0755 "$BIN_DIR/kxdp-cni" "$CNI_DIR/kxdp-cni"
log "installed into $PREFIX/bin and $CNI_DIR/kxdp-cni"
