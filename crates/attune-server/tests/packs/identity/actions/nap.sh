#!/bin/sh
sleep "$ATTUNE_ACTION_SECONDS"
echo "the real result"
