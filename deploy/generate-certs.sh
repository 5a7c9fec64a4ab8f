#!/usr/bin/env bash
# Certificates for the TLS deployment: a CA, the SuperLink/gateway server certificate, and one
# SSH-format ECDSA P-384 key pair per SuperNode (register the .pub with `flwr supernode register`).
#   deploy/generate-certs.sh [OUT_DIR] [SILO ...]        (default: deploy/certs beauty pantry sports)
#   EXTRA_SANS="DNS:coordinator.example.org,IP:10.0.0.5"  names silos use to reach the gateway
set -euo pipefail
OUT=${1:-deploy/certs}
shift || true
SILOS=("$@")
[ ${#SILOS[@]} -eq 0 ] && SILOS=(beauty pantry sports)
DAYS=${DAYS:-365}
SAN="DNS:superlink,DNS:fleet-gateway,DNS:localhost,IP:127.0.0.1${EXTRA_SANS:+,$EXTRA_SANS}"

mkdir -p "$OUT/superlink" "$OUT/supernodes"
cd "$OUT/superlink"
openssl genrsa -out ca.key 4096 2>/dev/null
openssl req -x509 -new -nodes -key ca.key -sha256 -days "$DAYS" -subj "/CN=MergeRec federation CA" \
  -out ca.crt
openssl genrsa -out server.key 4096 2>/dev/null
openssl req -new -key server.key -subj "/CN=superlink" -out server.csr
printf "subjectAltName=%s\n" "$SAN" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem \
  -days "$DAYS" -sha256 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext
chmod 600 ca.key
chmod 644 server.key   # read by the SuperLink/gateway containers' own users; keep the folder private
cd - >/dev/null
for silo in "${SILOS[@]}"; do
  rm -f "$OUT/supernodes/$silo" "$OUT/supernodes/$silo.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "$silo" -f "$OUT/supernodes/$silo"
  chmod 644 "$OUT/supernodes/$silo"   # mounted read-only into that silo's SuperNode only
done
echo "certificates in $OUT (SANs: $SAN); SuperNode keys: ${SILOS[*]}"
