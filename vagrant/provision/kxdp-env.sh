#!/usr/bin/env bash
# kxdp-env.sh — prints /etc/default/kxdp, the EnvironmentFile of both kxdp
# units, from the provisioner's environment (the Vagrantfile sets it). Its
# own script so that the test that parses the units' ExecStart with the
# binaries' real flag definitions sees exactly what a VM gets
# (control/tests/systemd_units.rs).
#
# The daemons read KXDP_NODE, KXDP_UNDERLAY_IP, KXDP_UPLINK and KXDP_WORKERS
# as their flags' environment variables too; KXDP_ETCD is the units' own
# (kxdp-control.service builds --store from it). Nothing here names a store
# or a cluster file: those stay in the units, so the file-store drop-in can
# replace the command line whole.
#
# Usage: KXDP_NODE=n1 KXDP_UNDERLAY_IP=... KXDP_ETCD=host:port kxdp-env.sh
set -euo pipefail

cat <<CONF
# Written by kxdp's vagrant/provision/kxdp.sh; read by kxdp-dataplane.service
# and kxdp-control.service.
KXDP_NODE=${KXDP_NODE:?}
KXDP_UNDERLAY_IP=${KXDP_UNDERLAY_IP:?}
KXDP_UPLINK=${KXDP_UPLINK:-eth1}
KXDP_ETCD=${KXDP_ETCD:?}
KXDP_WORKERS=1
# /metrics and /healthz of each daemon, on loopback only.
KXDP_DATAPLANE_METRICS_ADDRESS=127.0.0.1:9464
KXDP_CONTROL_METRICS_ADDRESS=127.0.0.1:9465
RUST_LOG=info
CONF
