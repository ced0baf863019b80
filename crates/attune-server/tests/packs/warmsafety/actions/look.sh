#!/bin/sh
# Reports what it finds of earlier jobs.
for p in /proc/[0-9]*; do
  cmdline=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)
  case "$cmdline" in *"sleep 600"*) echo "found: $cmdline";; esac
done
[ -e "$HOME/left-by-previous-job" ] && echo "found: a file of the previous job in $HOME"
echo "looked as uid $(id -u)"
