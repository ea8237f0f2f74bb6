#!/usr/bin/env bash
# In a fresh core: an API user for the mediator and two POS clients (Basic auth), as an HIE admin would.
# (The suite in this folder does the same itself, idempotently: tests/openhim_real/core.py.)
# v8.5.0 facts: mediator endpoints need the user in group 'admin' (the role permissions such as
# mediator-manage-all exist only on the unreleased master branch); a password given to POST /users is stored
# unhashed, so it is set with PUT /users/:email, which hashes it (what a console edit does).
set -euo pipefail
DIR="${1:-$HOME/.cache/openhim-real}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
A=(curl -sS --cacert "$DIR/certs/ca.crt" -u root@openhim.org:openhim-password -H 'Content-Type: application/json')
API=https://127.0.0.1:8080
"${A[@]}" -X POST $API/users -d '{"email":"client-registry@openhim.local","firstname":"Client","surname":"Registry","groups":["admin"]}'; echo
"${A[@]}" -X PUT $API/users/client-registry@openhim.local -d '{"email":"client-registry@openhim.local","password":"Mediator-Pass-1"}'; echo
for c in emr-kisenyi:kisenyi-pw emr-mulago:mulago-pw; do
  python3 "$HERE/mkclient.py" "${c%%:*}" "${c##*:}" | "${A[@]}" -X POST $API/clients -d @-; echo
done
echo "mediator API user client-registry@openhim.local / Mediator-Pass-1; POS clients emr-kisenyi:kisenyi-pw, emr-mulago:mulago-pw"
