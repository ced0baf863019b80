#!/bin/sh
# 50 MiB in one line on stdout (the output limit keeps the first 10 MiB), then a word on stderr.
head -c 52428800 /dev/zero | tr '\0' 'y'
echo done >&2
