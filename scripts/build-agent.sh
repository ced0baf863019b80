#!/usr/bin/env bash
#! Builds the static attune-agent into agent-dist/: attune-agent-<arch>, its .sha256, and checks
#! that it has no program interpreter (fully static). Idempotent; prints the size.
#! usage: scripts/build-agent.sh [--arch x86_64|aarch64]...   (default: x86_64)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dist="$repo_root/agent-dist"
cd "$repo_root"

arches=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) [ $# -ge 2 ] || { echo "build-agent.sh: --arch needs a value" >&2; exit 2; }; arches+=("$2"); shift 2 ;;
    --arch=*) arches+=("${1#--arch=}"); shift ;;
    -h|--help) sed -n 's/^#! \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-agent.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(x86_64)

target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[ -n "$target_dir" ] || target_dir="$repo_root/target"

# Prints "yes" when the ELF file has a PT_INTERP program header (i.e. it is dynamically linked).
has_interpreter() {
  if command -v readelf >/dev/null 2>&1; then
    if readelf -l "$1" | grep -q 'INTERP'; then echo yes; else echo no; fi
  else
    # No binutils: a static binary carries no dynamic loader path.
    if grep -q -a 'ld-linux\|ld-musl' "$1"; then echo yes; else echo no; fi
  fi
}

# Prints the path of the rust-lld that ships with the active toolchain, if any.
toolchain_rust_lld() {
  local sysroot host
  sysroot="$(rustc --print sysroot 2>/dev/null)" || return 0
  host="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
  if [ -x "$sysroot/lib/rustlib/$host/bin/rust-lld" ]; then
    printf '%s\n' "$sysroot/lib/rustlib/$host/bin/rust-lld"
  fi
}

build_one() {
  local arch="$1" target linker machine
  target="$arch-unknown-linux-musl"
  case "$arch" in
    x86_64) machine="X86-64" ;;
    aarch64)
      machine="AArch64"
      # rust-lld links against the musl crt objects and libc.a that the rust-std component of
      # a musl target ships (self-contained), so no cross C toolchain is needed; a cross gcc
      # is only a fallback.
      linker="$(toolchain_rust_lld)"
      if [ -z "$linker" ]; then
        for candidate in aarch64-linux-musl-gcc aarch64-linux-gnu-gcc; do
          if command -v "$candidate" >/dev/null 2>&1; then linker="$candidate"; break; fi
        done
      fi
      if [ -z "$linker" ]; then
        echo "build-agent.sh: skipping aarch64: no linker (rust-lld in the toolchain, aarch64-linux-musl-gcc or aarch64-linux-gnu-gcc)" >&2
        return 0
      fi
      if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        if ! rustup target add "$target" >/dev/null 2>&1; then
          echo "build-agent.sh: skipping aarch64: rustup cannot install $target" >&2
          return 0
        fi
      fi
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER="$linker"
      ;;
    *) echo "build-agent.sh: unsupported arch $arch (x86_64 or aarch64)" >&2; exit 2 ;;
  esac

  cargo build --profile release-agent --target "$target" -p attune-agent
  local built="$target_dir/$target/release-agent/attune-agent"
  local output="$dist/attune-agent-$arch"
  mkdir -p "$dist"
  # Copy through a temporary name so a running agent or a reader never sees a half-written file.
  cp "$built" "$output.tmp"
  chmod 0755 "$output.tmp"
  if [ "$(has_interpreter "$output.tmp")" = yes ]; then
    rm -f "$output.tmp"
    echo "build-agent.sh: $built is dynamically linked (has a PT_INTERP header); not copied" >&2
    exit 1
  fi
  if command -v readelf >/dev/null 2>&1 && ! readelf -h "$output.tmp" | grep -q "Machine:.*$machine"; then
    rm -f "$output.tmp"
    echo "build-agent.sh: $built is not an $machine binary; not copied" >&2
    exit 1
  fi
  mv -f "$output.tmp" "$output"
  (cd "$dist" && sha256sum "attune-agent-$arch" > "attune-agent-$arch.sha256")
  local size
  size=$(stat -c %s "$output")
  printf 'agent-dist/attune-agent-%s: %s bytes (%s KiB), static, sha256 %s\n' \
    "$arch" "$size" "$((size / 1024))" "$(cut -d' ' -f1 "$dist/attune-agent-$arch.sha256")"
}

for arch in "${arches[@]}"; do
  build_one "$arch"
done
