#!/usr/bin/env bash
# (From the shared openhim-real kit of issue 19; used by tests/openhim_real, see its README section.)
# Start FerretDB (127.0.0.1:27017, SQLite files in DIR/fdb) and the real OpenHIM core v8.5.0 built by ../shared/openhim-real/build.sh:
# API https://127.0.0.1:8080 (certificate DIR/certs/core.crt, CA DIR/certs/ca.crt), router http :5001, https :5000.
# Root login: root@openhim.org / openhim-password. PIDs in DIR/*.pid (stop.sh ends them), logs in DIR/logs/.
set -euo pipefail
DIR="${1:-$HOME/.cache/openhim-real}"
mkdir -p "$DIR/fdb" "$DIR/state" "$DIR/logs"
if ! (exec 3<>/dev/tcp/127.0.0.1/27017) 2>/dev/null; then
  setsid nohup "$DIR/bin/ferretdb" --handler=sqlite --sqlite-url="file:$DIR/fdb/" --listen-addr=127.0.0.1:27017 \
    --state-dir="$DIR/state" --telemetry=disable >>"$DIR/logs/ferretdb.log" 2>&1 </dev/null &
  echo $! > "$DIR/ferretdb.pid"
  for _ in $(seq 30); do (exec 3<>/dev/tcp/127.0.0.1/27017) 2>/dev/null && break; sleep 1; done
fi
if ! curl -sk -o /dev/null https://127.0.0.1:8080/heartbeat; then
  (
    cd "$DIR/core"
    # maxPoolSize=1: FerretDB 1.x updates a document by read-modify-write without a transaction; the core updates
    # a transaction's status and its response concurrently, and with more connections one of them is lost
    export mongo_url="mongodb://127.0.0.1:27017/openhim?maxPoolSize=1" mongo_atnaUrl="mongodb://127.0.0.1:27017/openhim?maxPoolSize=1"
    export bindAddress=127.0.0.1 api_authenticationTypes='["basic","local","token"]' router_externalHostname=localhost
    export certificateManagement_watchFSForCert=true certificateManagement_certPath="$DIR/certs/core.crt" \
           certificateManagement_keyPath="$DIR/certs/core.key"
    exec setsid nohup node lib/server.js >>"$DIR/logs/openhim.log" 2>&1 </dev/null
  ) &
  echo $! > "$DIR/openhim.pid"
  for _ in $(seq 90); do curl -sk -o /dev/null https://127.0.0.1:8080/heartbeat && break; sleep 1; done
fi
curl -sS --cacert "$DIR/certs/ca.crt" https://127.0.0.1:8080/heartbeat; echo
echo "OpenHIM core v8.5.0: API https://127.0.0.1:8080 (CA $DIR/certs/ca.crt), router http://127.0.0.1:5001"
