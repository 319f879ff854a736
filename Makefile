# berth: the two commands of the quick start are `make dev` and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
# The PostgreSQL server that #[sqlx::test] creates its throwaway databases on.
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export BERTH_TEST_REDIS_URL ?= redis://127.0.0.1:6379

.PHONY: dev test services build lint fmt bench bench-admission bench-placement bench-pipeline bench-queue clean

## Bring berth up on the simulated cluster (all roles in one process).
dev: services
	$(CARGO) run --bin berth -- dev

## Run the whole test suite (unit, Redis, PostgreSQL and end-to-end tests), and compile the
## benches so they never rot (with the dev profile: a compile check, not a timing run).
test: services
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "cargo-nextest not found; using cargo test"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) bench --workspace --no-run --profile dev

## Start (or install) local PostgreSQL and Redis.
services:
	@scripts/services.sh

build:
	$(CARGO) build --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

SUMMARY := $(CURDIR)/target/bench-summary.md

## Every benchmark: the harnesses (placement at 100k nodes included, the pipeline through
## Redis, the queue beside apalis-redis), the criterion benches, then one summary table
## with each target marked met or not. About 10 minutes.
bench: services
	@mkdir -p target && rm -f $(SUMMARY)
	BERTH_BENCH_SUMMARY=$(SUMMARY) $(CARGO) run --release -p berth-bench --bin placement -- 2000 50000 100000
	BERTH_BENCH_SUMMARY=$(SUMMARY) $(CARGO) run --release -p berth-bench --bin pipeline
	BERTH_BENCH_SUMMARY=$(SUMMARY) $(CARGO) run --release -p berth-bench --bin queue_vs_apalis
	$(CARGO) bench -p berth-bench
	@printf '\nSummary (%s, %s cores):\n\n| benchmark | target | measured | |\n|---|---|---|---|\n' "$$(uname -n)" "$$(nproc)"
	@cat $(SUMMARY)

## The queue's push + claim + ack beside apalis-redis's push + consume, same Redis.
bench-queue: services
	$(CARGO) run --release -p berth-bench --bin queue_vs_apalis

## decide() per scorer at 1k/10k/100k nodes beside best-fit and random-64, and packing quality.
bench-placement:
	$(CARGO) run --release -p berth-bench --bin placement

## Through Redis: enqueue -> bound at 10k nodes, round trips per task, memory per pending task.
bench-pipeline: services
	$(CARGO) run --release -p berth-bench --bin pipeline

## The admission harness: POST /v1/tasks rate and latency, batch tasks/s (needs the services).
bench-admission: services
	$(CARGO) run --release -p berth-bench --bin admission

clean:
	$(CARGO) clean
