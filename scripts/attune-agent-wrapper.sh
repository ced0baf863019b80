#!/bin/sh
#! attune-agent-wrapper.sh: run the Attune agent in any image, fetching it from the API when it
#! is not mounted. POSIX sh (busybox works). Use it as a container's entrypoint; its arguments
#! go to the agent.
#!
#!   ATTUNE_AGENT_DIR    where a mounted agent is looked for (default /opt/attune/agent): when
#!                       $ATTUNE_AGENT_DIR/attune-agent is executable, it is run as it is
#!   ATTUNE_AGENT_URL    the API to download from (e.g. http://attune:8080); required otherwise
#!   ATTUNE_AGENT_ARCH   x86_64 | aarch64 | arm64 (default: from `uname -m`)
#!   ATTUNE_AGENT_TOKEN  the server's agent bootstrap token, when it has one (X-Agent-Token)
#!   ATTUNE_AGENT_DOWNLOAD_DIR   where the download goes (default /tmp/attune-agent)
#!   ATTUNE_AGENT_DOWNLOAD_TRIES (default 10) and ATTUNE_AGENT_DOWNLOAD_DELAY seconds (default 5)
#!
#! The download is checked against the sha256 the API publishes (`sha256sum`, or refused when
#! no tool can check it) before it is made executable and run. Every failure says what failed.
set -eu

say() { printf 'attune-agent-wrapper: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

agent_dir="${ATTUNE_AGENT_DIR:-/opt/attune/agent}"
if [ -x "$agent_dir/attune-agent" ] && [ -f "$agent_dir/attune-agent" ]; then
  exec "$agent_dir/attune-agent" "$@"
fi

url="${ATTUNE_AGENT_URL:-}"
[ -n "$url" ] || fail "no agent at $agent_dir/attune-agent and ATTUNE_AGENT_URL is not set: mount the agent there or name the API to download it from"
url="${url%/}"

arch="${ATTUNE_AGENT_ARCH:-$(uname -m)}"
case "$arch" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) fail "architecture $arch has no agent build (x86_64, aarch64); set ATTUNE_AGENT_ARCH to override" ;;
esac

tries="${ATTUNE_AGENT_DOWNLOAD_TRIES:-10}"
delay="${ATTUNE_AGENT_DOWNLOAD_DELAY:-5}"
case "$tries$delay" in *[!0-9]*) fail "ATTUNE_AGENT_DOWNLOAD_TRIES and ATTUNE_AGENT_DOWNLOAD_DELAY must be whole numbers" ;; esac

if command -v curl >/dev/null 2>&1; then
  downloader=curl
elif command -v wget >/dev/null 2>&1; then
  downloader=wget
else
  fail "neither curl nor wget is in this image: mount the agent at $agent_dir/attune-agent instead"
fi
command -v sha256sum >/dev/null 2>&1 \
  || fail "sha256sum is not in this image, so a downloaded agent cannot be checked: refusing to run it (mount the agent at $agent_dir/attune-agent instead)"

download_dir="${ATTUNE_AGENT_DOWNLOAD_DIR:-/tmp/attune-agent}"
mkdir -p "$download_dir" || fail "cannot create $download_dir (set ATTUNE_AGENT_DOWNLOAD_DIR to a writable directory)"
errors="$download_dir/.errors"

# fetch URL FILE: 0 on success; otherwise the HTTP status (or 000) is in $status.
fetch() {
  status=000
  if [ "$downloader" = curl ]; then
    if [ -n "${ATTUNE_AGENT_TOKEN:-}" ]; then
      status=$(curl -sS -o "$2" -w '%{http_code}' -H "X-Agent-Token: $ATTUNE_AGENT_TOKEN" "$1" 2>"$errors") || status=000
    else
      status=$(curl -sS -o "$2" -w '%{http_code}' "$1" 2>"$errors") || status=000
    fi
    [ "$status" = 200 ]
  else
    if [ -n "${ATTUNE_AGENT_TOKEN:-}" ]; then
      wget -q -O "$2" --header "X-Agent-Token: $ATTUNE_AGENT_TOKEN" "$1" 2>"$errors" && status=200
    else
      wget -q -O "$2" "$1" 2>"$errors" && status=200
    fi
    if [ "$status" != 200 ]; then
      status=$(sed -n 's/.*HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$errors" | head -n 1)
      status="${status:-000}"
    fi
    [ "$status" = 200 ]
  fi
}

binary_url="$url/api/v1/agent/binary?arch=$arch"
sha256_url="$url/api/v1/agent/binary.sha256?arch=$arch"
attempt=1
while :; do
  if fetch "$sha256_url" "$download_dir/attune-agent.sha256" \
    && fetch "$binary_url" "$download_dir/attune-agent.part"; then
    break
  fi
  case "$status" in
    401|403) fail "the API refused the agent download ($status): ATTUNE_AGENT_TOKEN is missing or wrong" ;;
    404) fail "the API has no agent for $arch ($binary_url answered 404)" ;;
  esac
  if [ "$attempt" -ge "$tries" ]; then
    fail "could not download the agent from $url after $tries tries (last: HTTP $status, $(head -c 300 "$errors" 2>/dev/null))"
  fi
  say "download from $url failed (HTTP $status); try $attempt of $tries, again in ${delay}s"
  attempt=$((attempt + 1))
  sleep "$delay"
done

expected=$(cut -d ' ' -f 1 "$download_dir/attune-agent.sha256")
actual=$(sha256sum "$download_dir/attune-agent.part" | cut -d ' ' -f 1)
case "$expected" in
  *[!0-9a-f]*|'') rm -f "$download_dir/attune-agent.part"; fail "the API's sha256 for the agent is not a digest: $(head -c 100 "$download_dir/attune-agent.sha256")" ;;
esac
if [ "$expected" != "$actual" ]; then
  rm -f "$download_dir/attune-agent.part"
  fail "the downloaded agent's sha256 is $actual, the API says $expected: refusing to run it (truncated or altered in transit)"
fi
chmod 0755 "$download_dir/attune-agent.part"
mv -f "$download_dir/attune-agent.part" "$download_dir/attune-agent"
[ -x "$download_dir/attune-agent" ] || fail "$download_dir/attune-agent is not executable (a noexec mount? set ATTUNE_AGENT_DOWNLOAD_DIR)"
rm -f "$errors"
exec "$download_dir/attune-agent" "$@"
