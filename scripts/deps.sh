# shellcheck shell=bash
# deps.sh — Debian packages kxdp needs to build, run its lab and test it.
#
# Sourced by lab.sh and test.sh (not run on its own). Installs only what is
# missing (checked with `dpkg -s`), runs `apt-get update` at most once per
# shell, and never prompts.

# Build: clang/llvm (the XDP program), libelf/zlib/m4/pkg-config/make
# (libbpf and libxdp through libbpf-sys and libxdp-sys), protobuf-compiler (gRPC
# code) and libprotobuf-dev (google/protobuf/*.proto, which etcd-client's build
# script imports; only a Recommends of protobuf-compiler, so named here).
# Lab and tests: iproute2 (namespaces, veth, vxlan, bridge), ethtool (offloads),
# iperf3, tcpdump (underlay captures), jq (kxdpctl JSON), nftables, python3
# (raw AF_PACKET frames in the e2e tests, from /usr/bin/python3), libbpf-dev
# (bpf_helpers.h for the XDP program), etcd-server (the control plane's etcd
# store tests run a real etcd on loopback), openssl (their TLS certificates
# and the Vagrant lab's: scripts/provision/etcd-pki.sh),
# containernetworking-plugins (the CNI plugin delegates IPAM to host-local),
# util-linux (nsenter), procps and coreutils (ps, timeout).
# The lab's outside world: dnsmasq-base (its DNS server; only the binary:
# the `dnsmasq` package adds a system service, which kxdp_quiet_services
# stops if it is installed anyway), curl (the egress tests' HTTP client in
# pods; the HTTP server is python3) and bind9-dnsutils (dig, their DNS
# client over UDP), iputils-ping (ping: pods' and nodes' ICMP echo through
# the masquerade). dnsmasq also serves as a pod in e2e/tests/fragments.rs,
# where dig asks it for an answer larger than the MTU.
KXDP_DEB_PACKAGES=(
    clang llvm libelf-dev zlib1g-dev m4 pkg-config make gcc libc6-dev
    protobuf-compiler libprotobuf-dev libbpf-dev
    iproute2 ethtool iperf3 tcpdump jq nftables python3 procps coreutils
    etcd-server openssl containernetworking-plugins util-linux
    dnsmasq-base curl bind9-dnsutils iputils-ping
)
# What test.sh needs beyond those: shellcheck (lints every script), vagrant
# and vagrant-libvirt (vagrant/validate.sh checks the Vagrantfile with its
# provider), systemd (systemd-analyze verifies the units), prometheus (its
# server scrapes a lab node's /metrics in e2e/tests/metrics.rs, and its
# promtool lints every endpoint's exposition).
# shellcheck disable=SC2034 # used by the scripts that source this file
KXDP_TEST_PACKAGES=(shellcheck vagrant vagrant-libvirt systemd prometheus)

kxdp_apt_updated=0

# kxdp_deb_installed PKG: true when PKG is installed (not just known to dpkg).
kxdp_deb_installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

# kxdp_install_deps [EXTRA_PKG...]: installs the missing packages of
# KXDP_DEB_PACKAGES plus the extra ones given.
kxdp_install_deps() {
    local missing=() pkg
    for pkg in "${KXDP_DEB_PACKAGES[@]}" "$@"; do
        kxdp_deb_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        echo "==> Debian packages: all present"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: missing Debian packages (${missing[*]}); run as root to install them" >&2
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "error: missing packages (${missing[*]}) and no apt-get to install them" >&2
        return 1
    fi
    echo "==> installing Debian packages: ${missing[*]}"
    if ((kxdp_apt_updated == 0)); then
        apt-get update -qq
        kxdp_apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    kxdp_quiet_services "${missing[@]}"
}

# kxdp_quiet_services PKG...: stops and disables the system daemon that a
# package just installed (PKG...) enables and starts, for the packages kxdp
# needs only for their binary:
# - etcd-server: etcd on 127.0.0.1:2379, data in /var/lib/etcd; kxdp's tests
#   start their own members on free loopback ports, and a cluster's etcd is
#   the operator's to set up;
# - dnsmasq (if a list names it; kxdp's names dnsmasq-base, which has no
#   service): a resolver on port 53 of every interface; the lab runs its
#   own, in the outside world's namespace only;
# - prometheus: a server on :9090 scraping itself, data in
#   /var/lib/prometheus; the metrics test starts its own on a free port
#   with a temporary data directory.
# Debian starts them under systemd, and through their init scripts
# elsewhere. A service that was installed before is left as it was.
kxdp_quiet_services() {
    local pkg unit
    for pkg in "$@"; do
        case $pkg in
            etcd-server) unit=etcd ;;
            dnsmasq) unit=dnsmasq ;;
            prometheus) unit=prometheus ;;
            *) continue ;;
        esac
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
            systemctl disable --now "$unit.service" >/dev/null 2>&1 || true
        elif [[ -x /etc/init.d/$unit ]]; then
            /etc/init.d/"$unit" stop >/dev/null 2>&1 || true
            update-rc.d "$unit" disable >/dev/null 2>&1 || true
        fi
        echo "==> $pkg installed for its binary; the system $unit service it ships is left stopped and disabled"
    done
}

# kxdp_find_cargo: sets KXDP_CARGO to the cargo to use. Under `sudo`, root's
# PATH rarely holds the invoking user's ~/.cargo/bin: fall back to it, and
# point rustup at that user's toolchain (exports CARGO_HOME and RUSTUP_HOME).
# Call it directly, not in $(...), so the exports stay. Fails, saying how to
# fix it, when that toolchain is older than the workspace's rust-version.
kxdp_find_cargo() {
    KXDP_CARGO=$(command -v cargo || true)
    [[ -n $KXDP_CARGO ]] && { kxdp_check_rust; return; }
    local home
    for home in "${HOME:-/root}" "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
        if [[ -n $home && -x $home/.cargo/bin/cargo ]]; then
            export CARGO_HOME="$home/.cargo" RUSTUP_HOME="$home/.rustup"
            KXDP_CARGO=$home/.cargo/bin/cargo
            kxdp_check_rust
            return
        fi
    done
    echo "error: cargo not found: install Rust $(kxdp_rust_min) or newer with rustup (https://rustup.rs), or put cargo on PATH" >&2
    return 1
}

# kxdp_rust_min: the workspace's rust-version (Cargo.toml).
kxdp_rust_min() {
    sed -n 's/^rust-version = "\([0-9.]*\)".*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml"
}

# kxdp_check_rust: fails with the fix when the toolchain of KXDP_CARGO is
# older than the workspace's rust-version (Debian 12's own rustc is 1.63).
kxdp_check_rust() {
    local min have rustc
    min=$(kxdp_rust_min)
    rustc=$(dirname "$KXDP_CARGO")/rustc
    [[ -x $rustc ]] || rustc=rustc
    have=$("$rustc" --version 2>/dev/null | awk '{print $2}')
    if [[ -z $have ]] || [[ $(printf '%s\n%s\n' "$min" "${have%%-*}" | sort -V | head -1) != "$min" ]]; then
        echo "error: kxdp needs Rust $min or newer; $rustc is ${have:-missing}: rustup update stable (or install rustup: https://rustup.rs)" >&2
        return 1
    fi
}

# kxdp_in_mounted_root SCRIPT [ARG...]: makes sure / is a mount point, which
# `ip netns exec` and `ip -n` need (they make / a slave mount in a new mount
# namespace, and the kernel refuses that for a directory that is not the
# root of a mount: "mount --make-rslave /" failed: Invalid argument). It is
# on any booted system; in a plain chroot (a build root, or a fresh-machine
# check) it is not. There, the chroot's root is bound recursively at
# KXDP_MOUNTED_ROOT (once; later scripts reuse it, so the lab's namespaces
# stay visible to `lab.sh down`) and SCRIPT is run again chrooted into it,
# in the same directory. Returns when nothing needs doing.
kxdp_in_mounted_root() {
    local script=$1 root=${KXDP_MOUNTED_ROOT:-/run/kxdp-root}
    shift
    command -v mountpoint >/dev/null || return 0
    mountpoint -q / && return 0
    if [[ -n ${KXDP_REROOTED:-} ]]; then
        echo "error: / is not a mount point even in $root" >&2
        exit 1
    fi
    if ! mountpoint -q "$root"; then
        mkdir -p "$root"
        mount --rbind / "$root"
        mount --make-rslave "$root"
    fi
    echo "==> / is not a mount point (a chroot?): running $script in $root, a bind mount of it"
    # shellcheck disable=SC2016 # expanded by the inner bash
    exec env KXDP_REROOTED=1 chroot "$root" /bin/bash -c 'cd "$1" && shift && exec "$@"' \
        _ "$PWD" "$script" "$@"
}
