# The static attune-agent for long-lived workers, and the one-shot image (init-agent in
# docker-compose.yaml) that copies it into the `agent_bin` volume every worker mounts
# read-only at /opt/attune/agent. Context: the workspace root.
#
# Targets:
#   init (default)   builds the agent from the workspace (`builder`), keeps only the binary
#                    (`agent`, FROM scratch), and copies it into the volume (busybox)
#   agent            the binary alone, at /attune-agent
#   init-prebuilt    the same copier with agent-dist/attune-agent-x86_64 (`make agent`)
#                    instead of a build: for a machine without a registry, from local images
#                    (busybox:1.36) only
#
# BuildKit builds only the stages a target needs and reads agent.Dockerfile.dockerignore. The
# classic builder (docker 20.10 without buildx, docker-compose 1.29 by default) builds every
# stage before the target and sends the whole context, so there: keep the prebuilt stages
# first (they are), and send only what init-prebuilt reads:
#   tar -c compose/agent.Dockerfile agent-dist/attune-agent-x86_64 |
#     docker build -f compose/agent.Dockerfile --target init-prebuilt -t attune/agent-init:dev -

# The copier: atomic replacement, so a worker starting meanwhile never runs half a file.
FROM busybox:1.36 AS copier
CMD ["/bin/sh", "-c", "cp /attune-agent /opt/attune/agent/.attune-agent.new && chmod 0755 /opt/attune/agent/.attune-agent.new && mv -f /opt/attune/agent/.attune-agent.new /opt/attune/agent/attune-agent && echo \"attune-agent installed in /opt/attune/agent: $(/opt/attune/agent/attune-agent --version)\""]

FROM scratch AS prebuilt
COPY agent-dist/attune-agent-x86_64 /attune-agent

FROM copier AS init-prebuilt
COPY --from=prebuilt /attune-agent /attune-agent

# Static musl build, as scripts/build-agent.sh does it (profile release-agent). musl-tools for
# the C parts of ring.
FROM rust:1-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --locked --profile release-agent --target x86_64-unknown-linux-musl -p attune-agent \
    && cp target/x86_64-unknown-linux-musl/release-agent/attune-agent /attune-agent

FROM scratch AS agent
COPY --from=builder /attune-agent /attune-agent

FROM copier AS init
COPY --from=agent /attune-agent /attune-agent
