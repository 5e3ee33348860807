#!/usr/bin/env bash
# Regenerates the demo certificates of examples/tls-gateway.yaml and of the
# TLS tests (tests/tests/tls.rs) with openssl. Test-only keys: never use them
# for anything real. Valid for 10 years, except expired-client.pem.
#
#   ca.pem               server CA (ECDSA P-256)
#   server.pem/.key      localhost, *.example.test, 127.0.0.1 (ECDSA P-256)
#   other.pem/.key       api.other.test (RSA 2048)
#   ed25519.pem/.key     ed25519.test (Ed25519)
#   client-ca.pem        client CA (ECDSA P-256)
#   client.pem/.key      CN=client, URI spiffe://meshgate.test/ns/default/sa/client
#   expired-client.pem/.key  the same CA, expired in 2020
#   rogue-ca.pem, rogue-client.pem/.key  a client certificate from another CA
set -euo pipefail
cd "$(dirname "$0")"
umask 022
days=3650
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

ca() { # NAME CN
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.pem" -days "$days" -subj "/O=meshgate demo/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}

leaf() { # NAME CA KEYALG SUBJ SAN EKU
    case "$3" in
    ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" ;;
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null ;;
    ed25519) openssl genpkey -algorithm ED25519 -out "$1.key" ;;
    esac
    openssl req -new -key "$1.key" -subj "$4" -out "$tmp/$1.csr"
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$5" "$6" >"$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
        -out "$1.pem" -days "$days" -extfile "$tmp/$1.ext" 2>/dev/null
}

ca ca "meshgate demo CA"
ca client-ca "meshgate demo client CA"
ca rogue-ca "rogue CA"
leaf server ca ec "/O=meshgate demo/CN=localhost" "DNS:localhost,DNS:*.example.test,IP:127.0.0.1" serverAuth
leaf other ca rsa "/O=meshgate demo/CN=api.other.test" "DNS:api.other.test" serverAuth
leaf ed25519 ca ed25519 "/O=meshgate demo/CN=ed25519.test" "DNS:ed25519.test" serverAuth
leaf client client-ca ec "/O=meshgate demo/CN=client" "URI:spiffe://meshgate.test/ns/default/sa/client" clientAuth
leaf rogue-client rogue-ca ec "/O=rogue/CN=client" "URI:spiffe://rogue.test/sa/client" clientAuth

# Expired: `openssl ca` sets explicit dates in the past.
mkdir -p "$tmp/ca"
: >"$tmp/ca/index.txt"
echo 1000 >"$tmp/ca/serial"
cat >"$tmp/ca.cnf" <<CNF
[ca]
default_ca = demo
[demo]
dir = $tmp/ca
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
[ext]
subjectAltName = URI:spiffe://meshgate.test/ns/default/sa/expired
extendedKeyUsage = clientAuth
basicConstraints = CA:FALSE
CNF
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out expired-client.key
openssl req -new -key expired-client.key -subj "/CN=expired" -out "$tmp/expired.csr"
openssl ca -batch -config "$tmp/ca.cnf" -cert client-ca.pem -keyfile client-ca.key \
    -startdate 20200101000000Z -enddate 20200201000000Z -extensions ext \
    -in "$tmp/expired.csr" -out "$tmp/expired.pem" 2>/dev/null
openssl x509 -in "$tmp/expired.pem" -out expired-client.pem

# X.509 v1 (no extensions), as some CAs still hand out: a v1 root CA
# (webpki accepts it as a trust anchor) signing a v3 server certificate,
# and a v1 leaf (webpki refuses it: no SAN, no version 3).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out v1-ca.key
openssl req -new -key v1-ca.key -subj "/O=meshgate demo/CN=meshgate v1 CA" -out "$tmp/v1-ca.csr"
openssl x509 -req -in "$tmp/v1-ca.csr" -signkey v1-ca.key -days 36500 -out v1-ca.pem 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out v1-issued.key
openssl req -new -key v1-issued.key -subj "/O=meshgate demo/CN=localhost" -out "$tmp/v1-issued.csr"
printf 'subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n' >"$tmp/v1-issued.ext"
openssl x509 -req -in "$tmp/v1-issued.csr" -CA v1-ca.pem -CAkey v1-ca.key -CAcreateserial \
    -days 36500 -extfile "$tmp/v1-issued.ext" -out v1-issued.pem 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out v1-leaf.key
openssl req -new -key v1-leaf.key -subj "/O=meshgate demo/CN=localhost" -out "$tmp/v1-leaf.csr"
openssl x509 -req -in "$tmp/v1-leaf.csr" -CA v1-ca.pem -CAkey v1-ca.key -CAcreateserial \
    -days 36500 -out v1-leaf.pem 2>/dev/null

rm -f ./*.srl
echo "certificates written to $(pwd)"
