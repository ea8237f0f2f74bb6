#!/usr/bin/env bash
# (From the shared openhim-real kit of issue 19; used by tests/openhim_real, see its README section.)
# Build a REAL OpenHIM core (v8.5.0, from its own source) and FerretDB v1.24.2 (MongoDB wire protocol on SQLite)
# into DIR (default: $HOME/.cache/openhim-real). Needs node/npm, go, git. Run once; start.sh runs them.
#   build.sh CORE_GIT [DIR]   CORE_GIT = a git clone or mirror of jembi/openhim-core-js (v8.5.0 tag needed)
# Why the patch: FerretDB 1.24 lacks the aggregation operator $filter that the core uses when it saves a
# channel; core-ferretdb.patch computes the same thing in JavaScript. Nothing else in the core is changed.
set -euo pipefail
CORE_GIT="${1:?usage: build.sh CORE_GIT [DIR]}"
DIR="${2:-$HOME/.cache/openhim-real}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$DIR/bin"
if [[ ! -f "$DIR/core/lib/server.js" ]]; then
  rm -rf "$DIR/core"
  git clone -q "$CORE_GIT" "$DIR/core"
  git -C "$DIR/core" checkout -q v8.5.0
  git -C "$DIR/core" apply "$HERE/core-ferretdb.patch"
  (cd "$DIR/core" && npm ci --no-audit --no-fund && npx babel src --out-dir lib -s >/dev/null)  # Node 20 only warns (engines <17)
fi
if [[ ! -x "$DIR/bin/ferretdb" ]]; then
  # `go install ...@v1.24.2` builds a binary that stops at start (the module zip has no build/version/version.txt)
  (cd "$DIR" && rm -rf ferretdb-mod && mkdir ferretdb-mod && cd ferretdb-mod && go mod init tmp >/dev/null 2>&1 \
     && go mod download -json github.com/FerretDB/FerretDB@v1.24.2 >/dev/null)
  src="$(go env GOMODCACHE)/github.com/!ferret!d!b/!ferret!d!b@v1.24.2"
  rm -rf "$DIR/ferretdb-src" && cp -r "$src" "$DIR/ferretdb-src" && chmod -R u+w "$DIR/ferretdb-src"
  echo v1.24.2 > "$DIR/ferretdb-src/build/version/version.txt"
  (cd "$DIR/ferretdb-src" && go build -o "$DIR/bin/ferretdb" ./cmd/ferretdb)
fi
if [[ ! -f "$DIR/certs/core.crt" ]]; then
  mkdir -p "$DIR/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=openhim-test-ca" \
    -keyout "$DIR/certs/ca.key" -out "$DIR/certs/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$DIR/certs/core.key" -out "$DIR/certs/core.csr" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$DIR/certs/san.ext"
  openssl x509 -req -in "$DIR/certs/core.csr" -CA "$DIR/certs/ca.crt" -CAkey "$DIR/certs/ca.key" -CAcreateserial \
    -days 365 -extfile "$DIR/certs/san.ext" -out "$DIR/certs/core.crt" 2>/dev/null
fi
echo "built in $DIR: core $(git -C "$DIR/core" describe --tags), $("$DIR/bin/ferretdb" --version 2>&1 | head -1)"
