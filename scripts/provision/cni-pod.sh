#!/usr/bin/env bash
# cni-pod.sh add|check|del NAME — a pod without Kubernetes: a network
# namespace NAME attached by the CNI plugin of a .conflist, the plugin run
# exactly as a container runtime runs it (libcni's way: the list's
# cniVersion and name added to the plugin's entry on stdin, CNI_* variables).
#
#   add    creates netns NAME (if missing) and runs ADD; prints the result;
#          on failure the netns it created is removed again
#   check  runs CHECK with the ADD's result as prevResult
#   del    runs DEL (idempotent), then removes netns NAME
#
# Env: KXDP_CNI_CONF (default /etc/cni/net.d/10-kxdp.conflist),
#      KXDP_CNI_PATH (default /opt/cni/bin:/usr/lib/cni),
#      KXDP_CNI_STATE (ADD results; default /run/kxdp/cni).
# Container ID: kxdp-NAME; interface: eth0.
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

CMD=${1:-}
NAME=${2:-}
case $CMD in
    add | check | del) ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
if ! [[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$ ]]; then
    echo "cni-pod.sh: pod name '$NAME': letters, digits, '_', '.', '-' (at most 41)" >&2
    exit 2
fi

CONF=${KXDP_CNI_CONF:-/etc/cni/net.d/10-kxdp.conflist}
CNI_PATH=${KXDP_CNI_PATH:-/opt/cni/bin:/usr/lib/cni}
STATE=${KXDP_CNI_STATE:-/run/kxdp/cni}
NETNS=/var/run/netns/$NAME
RESULT=$STATE/$NAME.json

[[ -r $CONF ]] || {
    echo "cni-pod.sh: cannot read $CONF" >&2
    exit 1
}
# The plugin's stdin: the list's first plugin with cniVersion and name added.
plugin_conf() {
    jq -c --argjson prev "${1:-null}" '.plugins[0] + {cniVersion, name}
        + (if $prev == null then {} else {prevResult: $prev} end)' "$CONF"
}
plugin_bin() {
    local type dir
    type=$(jq -r '.plugins[0].type' "$CONF")
    IFS=: read -ra dirs <<<"$CNI_PATH"
    for dir in "${dirs[@]}"; do
        [[ -x $dir/$type ]] && {
            echo "$dir/$type"
            return 0
        }
    done
    echo "cni-pod.sh: plugin $type not found on $CNI_PATH" >&2
    return 1
}
# run_plugin COMMAND NETNS_OR_EMPTY STDIN
# IgnoreUnknown=1: what kubelet/containerd send too; host-local refuses
# CNI_ARGS it does not know without it.
run_plugin() {
    local bin
    bin=$(plugin_bin)
    CNI_COMMAND=$1 CNI_CONTAINERID=kxdp-$NAME CNI_NETNS=$2 CNI_IFNAME=eth0 \
        CNI_PATH=$CNI_PATH CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=$NAME" "$bin" <<<"$3"
}

case $CMD in
    add)
        created=0
        if [[ ! -e $NETNS ]]; then
            ip netns add "$NAME"
            ip -n "$NAME" link set lo up
            created=1
        fi
        mkdir -p "$STATE"
        if out=$(run_plugin ADD "$NETNS" "$(plugin_conf)"); then
            printf '%s\n' "$out" >"$RESULT"
            printf '%s\n' "$out"
        else
            rc=$?
            printf '%s\n' "$out" >&2
            ((created)) && ip netns del "$NAME"
            exit "$rc"
        fi
        ;;
    check)
        [[ -r $RESULT ]] || {
            echo "cni-pod.sh: no ADD result for $NAME in $STATE" >&2
            exit 1
        }
        run_plugin CHECK "$NETNS" "$(plugin_conf "$(cat "$RESULT")")"
        ;;
    del)
        ns=''
        [[ -e $NETNS ]] && ns=$NETNS
        run_plugin DEL "$ns" "$(plugin_conf)"
        [[ -n $ns ]] && ip netns del "$NAME"
        rm -f "$RESULT"
        ;;
esac
