#!/bin/sh
i=0
while [ "$i" -lt "${ATTUNE_ACTION_DECISECONDS:-0}" ]; do sleep 0.1; i=$((i + 1)); done
echo "item ${ATTUNE_ACTION_ITEM} done"
