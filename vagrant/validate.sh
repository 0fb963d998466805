#!/usr/bin/env bash
# validate.sh — what CI can check of the Vagrant lab without a VM host:
#   - 'vagrant validate' of the Vagrantfile, for both stores;
#   - shellcheck of the provisioning scripts (vagrant/provision/ and the
#     shared scripts/provision/);
#   - systemd-analyze verify of the units (binaries that only exist on a
#     provisioned VM are not an error);
#   - the fallback cluster file with kxdpctl validate.
# Every tool is required (scripts/test.sh installs vagrant, shellcheck and
# systemd through scripts/deps.sh; kxdpctl comes from the release build): a
# missing one fails the run, it is not skipped.
# Exit 0: all checks passed; 1: a check failed or a tool is missing.
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

kxdpctl=${KXDPCTL:-$ROOT/target/release/kxdpctl}
[[ -x $kxdpctl ]] || kxdpctl=$ROOT/target/debug/kxdpctl
for tool in vagrant shellcheck systemd-analyze "$kxdpctl"; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found (sudo scripts/test.sh installs and builds what this needs)" >&2
        exit 1
    }
done

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

check "shellcheck" shellcheck -x -P SCRIPTDIR "$HERE"/provision/*.sh "$HERE"/validate.sh "$ROOT"/scripts/provision/*.sh

verify_units() {
    local out
    out=$(systemd-analyze verify "$HERE"/systemd/*.service 2>&1 | grep -v 'is not executable' || true)
    [[ -z $out ]] || {
        printf '%s\n' "$out" >&2
        return 1
    }
}
check "systemd-analyze verify" verify_units

check "kxdpctl validate vagrant/cluster.yaml" "$kxdpctl" validate "$HERE/cluster.yaml"

exit "$FAILED"
