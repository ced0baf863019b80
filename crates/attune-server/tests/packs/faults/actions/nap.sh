#!/bin/sh
# Sleeps for the given seconds, then reports how long.
echo "napping for ${ATTUNE_ACTION_SECONDS}s" >&2
sleep "$ATTUNE_ACTION_SECONDS"
printf '{"slept": %s}\n' "$ATTUNE_ACTION_SECONDS"
