#!/bin/sh
# File delivery: echoes the parameter file.
cat "$ATTUNE_PARAMETER_FILE"
