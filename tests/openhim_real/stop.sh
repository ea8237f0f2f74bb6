#!/usr/bin/env bash
# (From the shared openhim-real kit of issue 19; used by tests/openhim_real, see its README section.)
# Stop what start.sh started (by the PIDs it saved).
DIR="${1:-$HOME/.cache/openhim-real}"
for p in openhim ferretdb; do
  [[ -f "$DIR/$p.pid" ]] && kill "$(cat "$DIR/$p.pid")" 2>/dev/null; rm -f "$DIR/$p.pid"
done
