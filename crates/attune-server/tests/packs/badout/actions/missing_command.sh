#!/bin/sh
echo starting
echo '{}' | jq -r .x
