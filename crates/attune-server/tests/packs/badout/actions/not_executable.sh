#!/bin/sh
# A program without any execute bit: even root cannot run it (exit 126).
cp /bin/busybox "$ATTUNE_WORK_DIR/tool"
chmod 644 "$ATTUNE_WORK_DIR/tool"
"$ATTUNE_WORK_DIR/tool" true
