#!/bin/sh
# Writes where an action expects to: its HOME, its TMPDIR and its working directory.
set -e
echo home > "$HOME/home-file"
echo tmp > "$TMPDIR/tmp-file"
printf '{"uid": %s, "home": "%s", "tmpdir": "%s", "home_file": "%s"}\n' \
  "$(id -u)" "$HOME" "$TMPDIR" "$(cat "$HOME/home-file")"
