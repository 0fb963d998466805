#!/usr/bin/env bash
# Vagrant provisioner "etcd" (node n1 only): Debian's etcd-server as a
# one-member cluster serving clients on the underlay (KXDP_ETCD, e.g.
# 172.30.0.11:2379) and loopback, over TLS, to clients with a certificate of
# the lab's CA only (--client-cert-auth). The certificates are
# scripts/provision/etcd-pki.sh's, made on the host by the Vagrantfile's
# trigger (KXDP_SRC/vagrant/.pki). Peers stay on plain loopback: one member.
set -euo pipefail

ETCD=${KXDP_ETCD:?KXDP_ETCD (host:port) not set}
NODE=${KXDP_NODE:?}
IP=${ETCD%:*}
PORT=${ETCD##*:}
PKI_SRC=${KXDP_SRC:-/kxdp}/vagrant/.pki
PKI=/etc/etcd/pki

if [[ ! -e $PKI_SRC/server.pem ]]; then
    echo "error: no $PKI_SRC/server.pem: vagrant up makes it on the host (scripts/provision/etcd-pki.sh)" >&2
    exit 1
fi
install -d -m 0750 -o root -g etcd "$PKI"
install -m 0644 "$PKI_SRC/ca.pem" "$PKI_SRC/server.pem" "$PKI/"
install -m 0640 -o root -g etcd "$PKI_SRC/server-key.pem" "$PKI/"

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
ETCD_LISTEN_CLIENT_URLS="https://$IP:$PORT,https://127.0.0.1:$PORT"
ETCD_ADVERTISE_CLIENT_URLS="https://$IP:$PORT"
ETCD_CLIENT_CERT_AUTH="true"
ETCD_TRUSTED_CA_FILE="$PKI/ca.pem"
ETCD_CERT_FILE="$PKI/server.pem"
ETCD_KEY_FILE="$PKI/server-key.pem"
ETCD_LISTEN_PEER_URLS="http://127.0.0.1:2380"
ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:2380"
ETCD_INITIAL_CLUSTER="$NODE=http://127.0.0.1:2380"
ETCD_INITIAL_CLUSTER_STATE="new"
CONF
systemctl enable etcd >/dev/null
systemctl restart etcd

for _ in $(seq 1 30); do
    if ETCDCTL_API=3 etcdctl --endpoints "https://$ETCD" --cacert "$PKI_SRC/ca.pem" \
        --cert "$PKI_SRC/client.pem" --key "$PKI_SRC/client-key.pem" \
        endpoint health >/dev/null 2>&1; then
        echo "==> etcd serving on https://$ETCD (client certificates required)"
        exit 0
    fi
    sleep 1
done
echo "error: etcd did not become healthy on https://$ETCD" >&2
journalctl -u etcd -n 30 --no-pager >&2 || true
exit 1
