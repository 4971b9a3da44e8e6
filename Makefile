# radiogate: the two commands of the README's quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
CARGO ?= cargo

.PHONY: demo test setup setup-python build lint test-rust test-python models clean-runs broker-start broker-stop check-deploy bench

## Install what is missing, build, classify the bundled sample of real FIRST cutouts.
demo: setup
	$(CARGO) build --release --quiet
	target/release/radiogate classify --config config/offline-sample.toml --out out/sample.jsonl --truth samples/first/labels.csv

## Every test: lint, Rust unit and integration tests, Python tests (what CI runs).
test: setup setup-python lint test-rust test-python check-deploy

setup:
	scripts/setup.sh

setup-python:
	PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install --quiet --disable-pip-version-check -r python/requirements.txt

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --quiet -- -D warnings
	cd python && ruff format --check . ../scripts ../examples && ruff check . ../scripts ../examples

## The Kafka tests need a broker: start one (scripts/kafka/broker.sh), stop it even on failure.
test-rust:
	scripts/kafka/broker.sh start
	status=0; $(CARGO) test --quiet || status=$$?; scripts/kafka/broker.sh stop; exit $$status

## A single-node Apache Kafka broker on 127.0.0.1:$${KAFKA_PORT:-9092}, for local runs.
broker-start:
	scripts/kafka/broker.sh start

broker-stop:
	scripts/kafka/broker.sh stop

test-python:
	cd python && $(PYTHON) -m pytest -q

## deploy/: Prometheus rules and their unit tests, the metrics they and the dashboards use,
## Kubernetes manifests against offline schemas, compose and Dockerfiles (scripts/check-deploy.sh).
check-deploy:
	scripts/check-deploy.sh

## Benchmarks (BENCHMARKS.md): `make bench`, `make bench QUICK=1` (minutes), `make bench LONG=1`.
bench:
	scripts/bench/run.sh
