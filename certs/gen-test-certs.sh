#!/usr/bin/env bash
# Generate a throw-away PKI for tests and local runs. Private keys are written to
# OUT_DIR only and are never committed (see .gitignore).
#
#   certs/gen-test-certs.sh [OUT_DIR]      (default: certs/out)
#
# Produces:
#   ca.crt / ca.key              test CA
#   server.crt / server.key      leaf for localhost, 127.0.0.1, ::1 (signed by the CA)
#   other.crt / other.key        a second leaf from the same CA with another key
#   rogue-ca.crt, rogue.crt/.key a leaf from an unrelated CA (untrusted)
#   client.crt / client.key      a client certificate from the CA (mutual TLS)
set -euo pipefail
out="${1:-$(dirname "$0")/out}"
mkdir -p "$out"
cd "$out"
umask 077

days=30
san="subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

mkca() { # name cn
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=$2" -keyout "$1.key" -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
mkleaf() { # name ca [extendedKeyUsage]
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=%s\n' "$san" "${3:-serverAuth}" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

mkca ca "keygate test CA"
mkleaf server ca
mkleaf other ca
mkca rogue-ca "rogue test CA"
mkleaf rogue rogue-ca
mkleaf client ca clientAuth
chmod 600 ./*.key
chmod 644 ./*.crt
echo "test certificates in $(pwd)"
