#!/usr/bin/env bash
# validate.sh — what CI can check of the Vagrant lab without a VM host:
#   - 'vagrant validate' of the Vagrantfile, for both stores (Debian's vagrant
#     package is installed if missing and we are root);
#   - shellcheck of the provisioning scripts (vagrant/provision/ and the
#     shared scripts/provision/), if shellcheck is there;
#   - systemd-analyze verify of the units, if systemd-analyze is there
#     (binaries that only exist on a provisioned VM are not an error);
#   - the fallback cluster file with kxdpctl validate, if kxdpctl is built.
# Exit 0: all checks run passed; 1: a check failed; 77: skipped (no vagrant
# and no way to install it).
# shellcheck disable=SC2317 # the functions below run through check()
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FAILED=0

check() {
    local name=$1
    shift
    if "$@"; then
        echo "ok: $name"
    else
        echo "FAILED: $name" >&2
        FAILED=1
    fi
}

if ! command -v vagrant >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing Debian's vagrant package"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq vagrant >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq vagrant >/dev/null 2>&1; } || true
    fi
    if ! command -v vagrant >/dev/null; then
        echo "skipped: vagrant is not installed and could not be (apt-get install -y vagrant, as root)"
        exit 77
    fi
fi

# Keep vagrant's state out of the tree and out of the user's ~/.vagrant.d.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export VAGRANT_HOME=$work/home VAGRANT_DOTFILE_PATH=$work/dot VAGRANT_CHECKPOINT_DISABLE=1

validate() {
    (cd "$HERE" && KXDP_STORE=$1 vagrant validate)
}
check "vagrant validate (etcd store)" validate etcd
check "vagrant validate (file store)" validate file
if (cd "$HERE" && KXDP_STORE=bogus vagrant validate >/dev/null 2>&1); then
    echo "FAILED: vagrant validate accepts KXDP_STORE=bogus" >&2
    FAILED=1
else
    echo "ok: KXDP_STORE=bogus refused"
fi

if command -v shellcheck >/dev/null; then
    check "shellcheck" shellcheck -x -P SCRIPTDIR "$HERE"/provision/*.sh "$HERE"/validate.sh "$ROOT"/scripts/provision/*.sh
else
    echo "note: shellcheck not installed: provisioning scripts not linted"
fi

if command -v systemd-analyze >/dev/null; then
    verify_units() {
        local out
        out=$(systemd-analyze verify "$HERE"/systemd/*.service 2>&1 | grep -v 'is not executable' || true)
        [[ -z $out ]] || {
            printf '%s\n' "$out" >&2
            return 1
        }
    }
    check "systemd-analyze verify" verify_units
else
    echo "note: systemd-analyze not installed: units not verified"
fi

kxdpctl=${KXDPCTL:-$ROOT/target/release/kxdpctl}
[[ -x $kxdpctl ]] || kxdpctl=$ROOT/target/debug/kxdpctl
if [[ -x $kxdpctl ]]; then
    check "kxdpctl validate vagrant/cluster.yaml" "$kxdpctl" validate "$HERE/cluster.yaml"
else
    echo "note: no kxdpctl built: vagrant/cluster.yaml not validated"
fi

exit "$FAILED"
