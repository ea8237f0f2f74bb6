#!/usr/bin/env bash
# Make a private CA and a TLS certificate for the OpenHIM core's API (once, before `docker compose up`).
# The core serves its API with deploy/openhim/certs/core.{crt,key} (certificateManagement_* settings in
# docker-compose.yml); the mediator verifies it with ca.crt (CR_OPENHIM_CA_FILE). Import ca.crt into the
# browsers of the admins who use the console, or put a certificate of your own CA in the same files.
#   CORE_HOSTNAMES  extra DNS names of the core, comma-separated (e.g. him.example.org)
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/certs"
mkdir -p "$DIR"
cd "$DIR"
if [[ -f core.crt && -f core.key && -f ca.crt ]]; then
  echo "make-certs: $DIR already has ca.crt, core.crt, core.key (delete them to make new ones)"
  exit 0
fi
names="DNS:openhim-core,DNS:localhost,IP:127.0.0.1"
IFS=',' read -ra extra <<< "${CORE_HOSTNAMES:-}"
for h in "${extra[@]}"; do [[ -n "$h" ]] && names="$names,DNS:$h"; done
openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -subj "/CN=Client registry deployment CA" \
  -keyout ca.key -out ca.crt -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
  2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=openhim-core" -keyout core.key -out core.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names" > core.ext
openssl x509 -req -in core.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile core.ext -out core.crt
rm -f core.csr core.ext
chmod 600 ca.key   # keep the CA key offline after this
chmod 644 core.key # the core runs as another user in its container and must read it
echo "make-certs: wrote $DIR/{ca.crt,core.crt,core.key} for $names"
