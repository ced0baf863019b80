#!/bin/sh
# Writes about 50 MB to PID 1's stdout, the container's own log, past the agent's capture.
line=$(head -c 4000 /dev/zero | tr '\0' x)
yes "$line" | head -c 52428800 > /proc/1/fd/1 || exit 3
echo '{"flooded_bytes": 52428800}'
