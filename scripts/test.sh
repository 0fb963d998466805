#!/usr/bin/env bash
# test.sh — everything CI checks, in order: Debian packages, formatting,
# clippy, the release build, the workspace tests, then the end-to-end lab
# tests. Prints a summary; exits non-zero if any step failed.
#
# Needs root (namespaces, XDP). CI runs it as `.ci/run`.
#   sudo scripts/test.sh
# Env: KXDP_TEST_SKIP_E2E=1 skips the end-to-end tests; E2E_FILTER=NAME runs
# only the e2e tests whose name contains NAME.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deps.sh
source "$ROOT/scripts/deps.sh"
cd "$ROOT"

case ${1:-} in
    -h | --help)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac

if [[ $(id -u) -ne 0 ]]; then
    echo "error: scripts/test.sh needs root (network namespaces, XDP): sudo scripts/test.sh" >&2
    exit 1
fi
kxdp_in_mounted_root "$ROOT/scripts/test.sh" "$@"

STEPS=() RESULTS=() TIMES=()
FAILED=0 LAST_RC=0

# step NAME CMD...: runs CMD, records whether it passed and how long it took.
step() {
    local name=$1 start rc
    shift
    echo
    echo "==> $name: $*"
    start=$SECONDS
    set +e
    "$@"
    rc=$?
    set -e
    LAST_RC=$rc
    STEPS+=("$name")
    TIMES+=("$((SECONDS - start))s")
    if ((rc == 0)); then
        RESULTS+=(ok)
    else
        RESULTS+=("FAILED (exit $rc)")
        FAILED=$((FAILED + 1))
    fi
    return 0
}

summary() {
    local i passed=0
    echo
    echo "==> summary"
    for i in "${!STEPS[@]}"; do
        printf '  %-28s %-18s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
        [[ ${RESULTS[$i]} == ok ]] && passed=$((passed + 1))
    done
    echo "steps: $passed passed, $FAILED failed"
}

"$ROOT/scripts/provision/packages.sh" "${KXDP_TEST_PACKAGES[@]}"
kxdp_find_cargo
cargo() { "$KXDP_CARGO" "$@"; }

# Leftovers of an earlier run that was killed would only confuse this one.
if [[ -x scripts/lab.sh ]]; then
    KXDP_NO_BUILD=1 scripts/lab.sh status >/dev/null 2>&1 &&
        echo "note: the default lab (prefix kxdp) is up; the tests use their own prefixes"
fi

step "shellcheck" shellcheck -x -P SCRIPTDIR scripts/*.sh scripts/provision/*.sh vagrant/provision/*.sh vagrant/validate.sh .ci/run
step "cargo fmt" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --release" cargo build --release --workspace
BUILD_RC=$LAST_RC
step "cargo test (workspace)" cargo test --workspace --exclude kxdp-e2e --no-fail-fast
if [[ ${KXDP_TEST_SKIP_E2E:-0} == 1 ]]; then
    echo "==> e2e tests skipped (KXDP_TEST_SKIP_E2E=1)"
elif ((BUILD_RC != 0)); then
    # The lab runs the release binaries: without them every e2e test fails.
    STEPS+=("cargo test (e2e)") RESULTS+=("FAILED (no build)") TIMES+=("0s")
    FAILED=$((FAILED + 1))
else
    step "cargo test (e2e)" cargo test --release -p kxdp-e2e --no-fail-fast -- --test-threads=1 ${E2E_FILTER:+"$E2E_FILTER"}
fi

summary
((FAILED == 0))
