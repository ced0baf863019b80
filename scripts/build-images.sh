#!/usr/bin/env bash
#! Builds the local container images the examples and tests use, without any registry.
#!
#! No registry is reachable on the development host, so each image is a rootfs made here
#! (busybox-static, or debootstrap for Debian images) and turned into an image with
#! `docker import`. Idempotent: an image that `docker image inspect` finds is skipped.
#!
#! Usage: scripts/build-images.sh [--all | IMAGE...]
#!   (no argument)  busybox:1.36, attune-test/busybox-nonroot, attune-test/noshell,
#!                  attune-test/entrypoint, attune-test/anyuser, python:3.11-slim
#!   --all          all of the above plus attune-test/polyglot and attune-test/python-venv
#!   IMAGE...       only the named images; short names: busybox, busybox-nonroot, noshell,
#!                  entrypoint, anyuser, python, polyglot, python-venv (full tags accepted too)
#!
#! attune-test/python-venv is python:3.11-slim's Debian python3 plus python3-venv and
#! python3-pip, for pack environments (requirements.txt) built by the agent.
#!
#! Environment: ATTUNE_IMAGE_CACHE (default /var/cache/attune-images) keeps the debootstrap
#! package cache and the finished Debian rootfs tarballs, so a re-run imports in seconds.
#! Needs root, docker, busybox-static and debootstrap (scripts/setup-host.sh installs them).
set -euo pipefail

readonly CACHE_DIR="${ATTUNE_IMAGE_CACHE:-/var/cache/attune-images}"
readonly DEBIAN_MIRROR="${ATTUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
readonly DEBIAN_SUITE="bookworm"
readonly PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

readonly TAG_BUSYBOX="busybox:1.36"
readonly TAG_BUSYBOX_NONROOT="attune-test/busybox-nonroot:latest"
readonly TAG_NOSHELL="attune-test/noshell:latest"
readonly TAG_ENTRYPOINT="attune-test/entrypoint:latest"
readonly TAG_ANYUSER="attune-test/anyuser:latest"
readonly TAG_PYTHON="python:3.11-slim"
readonly TAG_POLYGLOT="attune-test/polyglot:latest"
readonly TAG_PYTHON_VENV="attune-test/python-venv:latest"

log() { printf '[build-images] %s\n' "$*"; }
die() { printf '[build-images] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '1d; s/^#! \{0,1\}//p' "$0"
}

WORK_DIR=""
cleanup() {
  if [ -n "$WORK_DIR" ] && [ -d "$WORK_DIR" ]; then
    # debootstrap may leave proc/sys mounted inside its target when it fails half way.
    awk -v prefix="$WORK_DIR/" 'index($2, prefix) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r mount_point; do umount -l "$mount_point" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK_DIR"
  fi
}
trap cleanup EXIT

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

BUILT=()
SKIPPED=()

# Packs a rootfs directory into an uncompressed tar on stdout, owned by root, without the
# contents of the pseudo filesystems the engine mounts itself.
pack_rootfs() {
  local rootfs="$1"
  tar --numeric-owner -C "$rootfs" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
    -cf - .
}

# Imports a rootfs tarball (path, or - for stdin) as TAG with the given --change instructions.
import_image() {
  local source="$1" tag="$2"
  shift 2
  local changes=(--change "ENV $PATH_ENV")
  local change
  for change in "$@"; do
    changes+=(--change "$change")
  done
  docker import "${changes[@]}" --message "built by attune scripts/build-images.sh" \
    "$source" "$tag" >/dev/null
}

# Writes /etc/passwd and /etc/group with root and nobody into a rootfs.
write_users() {
  local rootfs="$1" shell="$2"
  mkdir -p "$rootfs/etc"
  cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:$shell
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nobody:x:65534:
EOF
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
}

# Makes a busybox rootfs in DIR: /bin/busybox plus a symlink for every applet at its usual path.
make_busybox_rootfs() {
  local rootfs="$1"
  local busybox_bin
  busybox_bin="$(command -v busybox || true)"
  [ -n "$busybox_bin" ] || die "busybox not found: install busybox-static"
  if ldd "$busybox_bin" >/dev/null 2>&1; then
    die "$busybox_bin is dynamically linked: install busybox-static"
  fi
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,home,var,dev,proc,sys}
  chmod 0755 "$rootfs"/{bin,sbin,usr,usr/bin,usr/sbin,etc,home,var}
  chmod 0700 "$rootfs/root"
  chmod 1777 "$rootfs/tmp"
  install -m 0755 "$busybox_bin" "$rootfs/bin/busybox"
  local applet_path
  while read -r applet_path; do
    [ -n "$applet_path" ] || continue
    [ "$applet_path" = "bin/busybox" ] && continue
    mkdir -p "$rootfs/$(dirname "$applet_path")"
    ln -sf /bin/busybox "$rootfs/$applet_path"
  done < <("$busybox_bin" --list-full)
  [ -e "$rootfs/bin/sh" ] || ln -s /bin/busybox "$rootfs/bin/sh"
  write_users "$rootfs" /bin/sh
}

# Builds one of the busybox-based images with the given --change instructions.
build_busybox_variant() {
  local tag="$1"
  shift
  if image_exists "$tag"; then
    SKIPPED+=("$tag")
    log "skip $tag (already present)"
    return
  fi
  log "build $tag"
  local rootfs="$WORK_DIR/busybox-rootfs"
  if [ ! -d "$rootfs" ]; then
    make_busybox_rootfs "$rootfs"
  fi
  pack_rootfs "$rootfs" | import_image - "$tag" "$@"
  BUILT+=("$tag")
}

# A numeric USER with no passwd entry and a /tmp only root may write: the agent must still
# find a work area it can write.
build_anyuser() {
  local tag="$TAG_ANYUSER"
  if image_exists "$tag"; then
    SKIPPED+=("$tag")
    log "skip $tag (already present)"
    return
  fi
  log "build $tag"
  local rootfs="$WORK_DIR/anyuser-rootfs"
  make_busybox_rootfs "$rootfs"
  chmod 0755 "$rootfs/tmp"
  pack_rootfs "$rootfs" | import_image - "$tag" 'USER 4242:4242' 'CMD ["sh"]'
  BUILT+=("$tag")
}

build_noshell() {
  local tag="$TAG_NOSHELL"
  if image_exists "$tag"; then
    SKIPPED+=("$tag")
    log "skip $tag (already present)"
    return
  fi
  log "build $tag"
  local rootfs="$WORK_DIR/noshell-rootfs"
  mkdir -p "$rootfs/tmp" "$rootfs/etc"
  chmod 1777 "$rootfs/tmp"
  # No shell exists in this image, so the login shell named here is absent on purpose.
  write_users "$rootfs" /bin/sh
  pack_rootfs "$rootfs" | import_image - "$tag"
  BUILT+=("$tag")
}

# Debootstraps a minbase Debian rootfs with extra packages and caches it as a tarball.
# Prints the tarball path.
debian_rootfs_tarball() {
  local name="$1" include="$2"
  local tarball="$CACHE_DIR/$name-rootfs.tar"
  if [ -s "$tarball" ]; then
    log "reuse cached rootfs $tarball" >&2
    printf '%s\n' "$tarball"
    return
  fi
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: install debootstrap"
  mkdir -p "$CACHE_DIR/debs"
  local rootfs="$WORK_DIR/$name-rootfs"
  log "debootstrap $DEBIAN_SUITE ($include) into $rootfs; takes a minute or more" >&2
  if ! debootstrap --variant=minbase --include="$include" --cache-dir="$CACHE_DIR/debs" \
    "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$WORK_DIR/$name-debootstrap.log" 2>&1; then
    tail -30 "$WORK_DIR/$name-debootstrap.log" >&2
    die "debootstrap $name failed (full log above)"
  fi
  # Slim it down: package caches and lists are not needed at run time.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/debootstrap
  mkdir -p "$rootfs/usr/local/bin"
  if [ -x "$rootfs/usr/bin/python3" ]; then
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  fi
  local partial="$tarball.partial"
  pack_rootfs "$rootfs" >"$partial"
  mv "$partial" "$tarball"
  rm -rf --one-file-system "$rootfs"
  printf '%s\n' "$tarball"
}

build_debian_image() {
  local tag="$1" name="$2" include="$3"
  shift 3
  if image_exists "$tag"; then
    SKIPPED+=("$tag")
    log "skip $tag (already present)"
    return
  fi
  log "build $tag"
  local tarball
  tarball="$(debian_rootfs_tarball "$name" "$include")"
  import_image "$tarball" "$tag" "$@"
  BUILT+=("$tag")
}

build_one() {
  case "$1" in
    busybox | "$TAG_BUSYBOX")
      build_busybox_variant "$TAG_BUSYBOX" 'CMD ["sh"]' ;;
    busybox-nonroot | "$TAG_BUSYBOX_NONROOT" | attune-test/busybox-nonroot)
      build_busybox_variant "$TAG_BUSYBOX_NONROOT" 'USER nobody' 'CMD ["sh"]' ;;
    entrypoint | "$TAG_ENTRYPOINT" | attune-test/entrypoint)
      build_busybox_variant "$TAG_ENTRYPOINT" 'ENTRYPOINT ["/bin/false"]' ;;
    noshell | "$TAG_NOSHELL" | attune-test/noshell)
      build_noshell ;;
    anyuser | "$TAG_ANYUSER" | attune-test/anyuser)
      build_anyuser ;;
    python | "$TAG_PYTHON")
      build_debian_image "$TAG_PYTHON" python-3.11-slim python3 'CMD ["python3"]' ;;
    polyglot | "$TAG_POLYGLOT" | attune-test/polyglot)
      build_debian_image "$TAG_POLYGLOT" polyglot python3,perl,ruby,nodejs 'CMD ["python3"]' ;;
    python-venv | "$TAG_PYTHON_VENV" | attune-test/python-venv)
      build_debian_image "$TAG_PYTHON_VENV" python-venv python3,python3-venv,python3-pip 'CMD ["python3"]' ;;
    *)
      die "unknown image $1 (known: busybox busybox-nonroot noshell entrypoint python polyglot python-venv)" ;;
  esac
}

main() {
  local selected=()
  local arg
  for arg in "$@"; do
    case "$arg" in
      -h | --help) usage; exit 0 ;;
      --all) selected+=(busybox busybox-nonroot noshell entrypoint anyuser python polyglot python-venv) ;;
      -*) die "unknown option $arg (see --help)" ;;
      *) selected+=("$arg") ;;
    esac
  done
  if [ ${#selected[@]} -eq 0 ]; then
    # Busybox images first: they take a second and others wait on them.
    selected=(busybox busybox-nonroot noshell entrypoint anyuser python)
  fi

  [ "$(id -u)" = 0 ] || die "must run as root (debootstrap and root-owned rootfs files)"
  docker info >/dev/null 2>&1 || die "docker engine unreachable: run scripts/setup-host.sh"
  mkdir -p "$CACHE_DIR"
  WORK_DIR="$(mktemp -d --suffix=.attune-images)"

  local seen=" " image
  for image in "${selected[@]}"; do
    case "$seen" in *" $image "*) continue ;; esac
    seen+="$image "
    build_one "$image"
  done

  log "built: ${BUILT[*]:-none}"
  log "skipped (already present): ${SKIPPED[*]:-none}"
}

main "$@"
