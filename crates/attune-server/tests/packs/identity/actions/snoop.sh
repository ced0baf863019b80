#!/bin/sh
# Looks everywhere an action could find its agent's broker credentials or event key.
echo "uid $(id -u)"
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = "$$" ] && continue
  name=$(cat "$p/comm" 2>/dev/null)
  if environ=$(tr '\0' '\n' < "$p/environ" 2>/dev/null); then
    echo "environ of $pid ($name): readable"
    echo "$environ"
  else
    echo "environ of $pid ($name): denied"
  fi
  if readlink "$p/fd/0" >/dev/null 2>&1; then echo "fds of $pid ($name): readable"; else echo "fds of $pid ($name): denied"; fi
done
echo "--- own environment"
env
echo "--- files"
grep -rl "amqp://" / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | head -5
echo "--- done"
