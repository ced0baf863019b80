#!/bin/sh
# Forks without bound, and keeps at it: a shell exits when one of its forks fails, so awk (whose
# system() just returns when it cannot fork) restarts a recursive fork bomb forever. Only the
# container's pids limit holds it and only the action's timeout ends it.
echo "forking without bound" >&2
exec awk 'BEGIN { while (1) system("exec 2>/dev/null; bomb() { while :; do bomb & done; }; bomb") }'
