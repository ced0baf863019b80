#!/bin/sh
# Works for the given deciseconds, prints which item it was, and exits with the given code.
echo "item ${ATTUNE_ACTION_ITEM} working" >&2
sleep "$(( ATTUNE_ACTION_DECISECONDS / 10 )).$(( ATTUNE_ACTION_DECISECONDS % 10 ))"
echo "item ${ATTUNE_ACTION_ITEM} done"
exit "$ATTUNE_ACTION_CODE"
