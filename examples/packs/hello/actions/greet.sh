#!/bin/sh
# Env delivery: parameters arrive as ATTUNE_ACTION_<NAME>.
set -eu
printf '{"greeting": "Hello, %s%s", "host_kernel": "%s"}\n' \
  "$ATTUNE_ACTION_NAME" "$ATTUNE_ACTION_PUNCTUATION" "$(uname -s)"
