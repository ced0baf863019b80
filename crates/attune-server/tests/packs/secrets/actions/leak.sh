#!/bin/sh
# Prints its secrets: whole, inside longer lines, on stderr, and split across two writes.
token=$(sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' "$ATTUNE_PARAMETER_FILE")
fallback=$(sed -n 's/.*"fallback": *"\([^"]*\)".*/\1/p' "$ATTUNE_PARAMETER_FILE")
cat "$ATTUNE_PARAMETER_FILE"; echo
echo "token=$token and again x${token}y"
echo "fallback=$fallback" >&2
head=${token%????}
printf 'split:%s' "$head"
sleep 0.3
printf '%s:end\n' "${token#"$head"}"
