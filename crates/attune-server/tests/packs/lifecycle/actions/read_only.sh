#!/bin/sh
# Reports what a read-only root filesystem allows: the work dir (tmpfs) is writable, / is not.
if touch /attune-probe 2>/dev/null; then root=writable; else root=read-only; fi
if echo probe > "${TMPDIR:-/tmp}/attune-probe" 2>/dev/null; then tmp=writable; else tmp=read-only; fi
if touch "$ATTUNE_PACK_DIR/probe" 2>/dev/null; then pack=writable; else pack=read-only; fi
printf '{"root": "%s", "tmp": "%s", "pack": "%s", "cwd": "%s"}\n' "$root" "$tmp" "$pack" "$(pwd)"
