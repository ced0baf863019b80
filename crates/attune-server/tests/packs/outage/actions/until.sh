#!/bin/sh
# Works until the test answers on its loopback port, then prints its item.
until wget -q -O /dev/null "http://127.0.0.1:${ATTUNE_ACTION_PORT}/"; do sleep 0.2; done
echo "item ${ATTUNE_ACTION_ITEM} done"
