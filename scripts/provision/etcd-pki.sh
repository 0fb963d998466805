#!/usr/bin/env bash
# etcd-pki.sh DIR IP... — a CA and the certificates of an etcd store with
# TLS and client-certificate auth, made with the openssl CLI (EC P-256, 10
# years):
#   ca.pem ca-key.pem          the CA (etcd's --trusted-ca-file,
#                              kxdp-control's --etcd-ca)
#   server.pem server-key.pem  etcd's (--cert-file, --key-file), for each IP
#                              given, 127.0.0.1 and localhost
#   client.pem client-key.pem  kxdp-control's and kxdpctl's (--etcd-cert,
#                              --etcd-key), CN kxdp-control
# DIR is made 0700; when DIR/ca.pem exists nothing is made (rerunnable). The
# Vagrant lab runs it on the host (vagrant/.pki, synced to the VMs); the
# etcd tests of control/tests/etcd.rs run it into their temp dirs.
set -euo pipefail

DIR=${1:?usage: etcd-pki.sh DIR IP...}
shift
if [[ -e $DIR/ca.pem ]]; then
    exit 0
fi
command -v openssl >/dev/null || {
    echo "etcd-pki.sh: openssl not found" >&2
    exit 1
}
mkdir -p "$DIR"
chmod 0700 "$DIR"
cd "$DIR"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
serial() { echo "0x$(openssl rand -hex 16)"; }

key ca-key.pem
openssl req -x509 -new -key ca-key.pem -subj "/CN=kxdp etcd CA $(openssl rand -hex 4)" \
    -days 3650 -set_serial "$(serial)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

# leaf NAME CN EKU SAN: NAME.pem and NAME-key.pem, signed by the CA.
leaf() {
    local ext
    ext=$(mktemp)
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$3"
        [[ -n $4 ]] && echo "subjectAltName=$4"
    } >"$ext"
    key "$1-key.pem"
    openssl req -new -key "$1-key.pem" -subj "/CN=$2" |
        openssl x509 -req -CA ca.pem -CAkey ca-key.pem -set_serial "$(serial)" \
            -days 3650 -extfile "$ext" -out "$1.pem" 2>/dev/null
    rm -f "$ext"
}

san="IP:127.0.0.1,DNS:localhost"
for ip in "$@"; do
    san+=",IP:$ip"
done
leaf server etcd serverAuth "$san"
leaf client kxdp-control clientAuth ""
chmod 0600 ./*-key.pem
