# attune-server with the static agent it injects. Build the binaries first (`make build`).
FROM debian:bookworm-slim
COPY target/debug/attune-server /usr/local/bin/attune-server
COPY agent-dist/attune-agent-x86_64 /opt/attune/agent-dist/attune-agent-x86_64
ENV ATTUNE__DOCKER__AGENT_BINARY=/opt/attune/agent-dist/attune-agent-x86_64
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/attune-server"]
