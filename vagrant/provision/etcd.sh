#!/usr/bin/env bash
# Vagrant provisioner "etcd" (node n1 only): Debian's etcd-server as a
# one-member cluster serving clients on the underlay (KXDP_ETCD, e.g.
# 172.30.0.11:2379) and loopback. Plain HTTP, no auth: a lab on a private
# network, not a production etcd.
set -euo pipefail

ETCD=${KXDP_ETCD:?KXDP_ETCD (host:port) not set}
NODE=${KXDP_NODE:?}
IP=${ETCD%:*}
PORT=${ETCD##*:}

# Installing etcd-server starts it at once with Debian's defaults, which
# initialises a data directory for another member name and URLs: on the first
# provisioning, start over from an empty one.
if ! grep -q "kxdp's vagrant/provision/etcd.sh" /etc/default/etcd 2>/dev/null; then
    systemctl stop etcd 2>/dev/null || true
    rm -rf /var/lib/etcd/default
fi

# Debian's etcd.service reads /etc/default/etcd.
cat >/etc/default/etcd <<CONF
# Written by kxdp's vagrant/provision/etcd.sh.
ETCD_NAME="$NODE"
ETCD_DATA_DIR="/var/lib/etcd/default"
ETCD_LISTEN_CLIENT_URLS="http://$IP:$PORT,http://127.0.0.1:$PORT"
ETCD_ADVERTISE_CLIENT_URLS="http://$IP:$PORT"
ETCD_LISTEN_PEER_URLS="http://127.0.0.1:2380"
ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:2380"
ETCD_INITIAL_CLUSTER="$NODE=http://127.0.0.1:2380"
ETCD_INITIAL_CLUSTER_STATE="new"
CONF
systemctl enable etcd >/dev/null
systemctl restart etcd

for _ in $(seq 1 30); do
    if ETCDCTL_API=3 etcdctl --endpoints "http://$ETCD" endpoint health >/dev/null 2>&1; then
        echo "==> etcd serving on http://$ETCD"
        exit 0
    fi
    sleep 1
done
echo "error: etcd did not become healthy on http://$ETCD" >&2
journalctl -u etcd -n 30 --no-pager >&2 || true
exit 1
