#!/bin/sh
# Reports that it ran.
echo '{"ok": true}'
