#!/bin/sh
token=$(sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' "$ATTUNE_PARAMETER_FILE")
printf '{"token": "%s", "note": "x%sy"}\n' "$token" "$token"
