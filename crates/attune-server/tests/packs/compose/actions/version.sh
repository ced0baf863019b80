#!/bin/sh
if command -v busybox >/dev/null 2>&1; then
  echo "shell $(busybox | head -n 1)"
else
  echo "shell $(sh --version 2>&1 | head -n 1)"
fi
