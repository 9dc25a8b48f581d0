# The two commands of the README. Each makes its own virtualenv in .venv
# (mlwatchd's top-level `daemon` package would clash with python-daemon in a
# shared environment) and installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench soak fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

## make demo: embedded broker + built-in traffic with attacks + the daemon; prints findings
demo: $(VENV)/.installed-run
	$(BIN)/mlwatchd demo

## make test: the whole test suite (unit, conformance, detector families, real-broker integration)
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

## make bench: throughput of mlwatchd run against a bare kafka-python consumer
bench: $(VENV)/.installed-run
	$(BIN)/mlwatchd bench

## make soak: proof under faults (1M events, 1M flood principals, 10k poison, 3 replicas,
## 20 kill -9, scale-out/in, Slack 429/5xx); long. Smaller: make soak SOAK_ARGS="--events 50000"
SOAK_ARGS ?=
soak: $(VENV)/.installed-run
	$(BIN)/mlwatchd soak $(SOAK_ARGS)

## make fuzz: the decoder fuzzer, 1M seeded inputs (the suite runs 20,000); FUZZ_ARGS="--seed 3"
FUZZ_ARGS ?=
fuzz: $(VENV)/.installed-run
	$(BIN)/python tests/fuzz/fuzz_decoder.py --inputs 1000000 $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
