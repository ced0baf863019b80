#!/bin/sh
printf '{"name": "%s"}\n' "$ATTUNE_ACTION_NAME"
