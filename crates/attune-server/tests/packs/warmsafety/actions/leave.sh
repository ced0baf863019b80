#!/bin/sh
# Leaves a process outside the job's process group, and a file in the shared work area.
setsid sh -c 'exec sleep 600' </dev/null >/dev/null 2>&1 &
echo "left behind" > "$HOME/left-by-previous-job"
echo "left"
