# One entry point per task. `make demo` and `make test` are the two commands a newcomer needs.
.PHONY: demo test up down lint fmt agent images build bench clean-containers

## Install and start what is missing, build everything, run the hello pack end to end.
demo:
	bash scripts/demo.sh

## Every test: unit, golden, API, and end to end against real Docker, RabbitMQ and Postgres.
test:
	bash scripts/test.sh

## Start the server in the background (after `make demo` or `make build`).
up:
	bash scripts/server.sh start

## Stop the background server.
down:
	bash scripts/server.sh stop

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

agent:
	bash scripts/build-agent.sh

images:
	bash scripts/build-images.sh

build: agent
	cargo build -p attune-server -p attune-cli

bench:
	bash scripts/bench/cold-latency.sh
	bash scripts/bench/warm-pool.sh
	bash scripts/bench/queue-drain.sh
	bash scripts/bench/controller-rss.sh
	bash scripts/bench/agent-delivery.sh
	bash scripts/bench/agent-footprint.sh

## Remove every container Attune created on this host (recovery tool). One at a time: parallel
## removal of many host-network containers can deadlock Docker 20.10 (see docs/BENCHMARKS.md).
clean-containers:
	docker ps -aq --filter label=attune.managed=true | xargs -r -n1 docker rm -f
