#!/usr/bin/env bash
# Vagrant provisioner "kxdp": binaries, systemd units, start, CNI config.
#
#   1. scripts/provision/install-kxdp.sh: the binaries (synced from the host's
#      target/release, or built here), kxdp-cni into /usr/lib/cni
#   2. /etc/default/kxdp (node, uplink, etcd) and the units of vagrant/systemd;
#      etcd store: the lab CA and client certificate (vagrant/.pki, made on
#      the host) in /etc/kxdp/etcd, where the unit's --etcd-* flags read them;
#      KXDP_STORE=file adds a drop-in that runs kxdp-control on
#      /etc/kxdp/cluster.yaml (vagrant/cluster.yaml) instead of etcd
#   3. systemctl enable --now kxdp-dataplane kxdp-control
#   4. scripts/provision/cni-config.sh: /etc/cni/net.d/10-kxdp.conflist with
#      the pod CIDR kxdp-control holds for this node
set -euo pipefail

SRC=${KXDP_SRC:-/kxdp}
NODE=${KXDP_NODE:?}
STORE=${KXDP_STORE:-etcd}
UNITS=$SRC/vagrant/systemd

"$SRC/scripts/provision/install-kxdp.sh"

install -d -m 0755 /usr/local/lib/kxdp /etc/kxdp
# The daemons run as kxdp (the units' User=), with capabilities, not root.
id -u kxdp >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin kxdp
install -m 0755 "$SRC/scripts/provision/uplink.sh" /usr/local/lib/kxdp/uplink.sh
install -m 0755 "$SRC/scripts/provision/cni-pod.sh" /usr/local/bin/kxdp-pod
"$SRC/vagrant/provision/kxdp-env.sh" >/etc/default/kxdp

install -m 0644 "$UNITS/kxdp-dataplane.service" "$UNITS/kxdp-control.service" /etc/systemd/system/
rm -rf /etc/systemd/system/kxdp-control.service.d
if [[ $STORE == etcd ]]; then
    pki=$SRC/vagrant/.pki
    [[ -e $pki/client.pem ]] || {
        echo "error: no $pki/client.pem: vagrant up makes it on the host (scripts/provision/etcd-pki.sh)" >&2
        exit 1
    }
    install -d -m 0750 -g kxdp /etc/kxdp/etcd
    install -m 0640 -g kxdp "$pki/ca.pem" "$pki/client.pem" "$pki/client-key.pem" /etc/kxdp/etcd/
fi
if [[ $STORE == file ]]; then
    install -m 0644 "$SRC/vagrant/cluster.yaml" /etc/kxdp/cluster.yaml
    install -d /etc/systemd/system/kxdp-control.service.d
    install -m 0644 "$UNITS/kxdp-control.service.d/file-store.conf" \
        /etc/systemd/system/kxdp-control.service.d/file-store.conf
fi
systemctl daemon-reload
systemctl enable kxdp-dataplane kxdp-control >/dev/null
systemctl restart kxdp-dataplane kxdp-control

"$SRC/scripts/provision/cni-config.sh" "$NODE" --wait 180

echo "==> $NODE: kxdp ($STORE store) is up:"
kxdpctl nodes || true
