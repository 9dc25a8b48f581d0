# The two commands of the README. Each makes its own virtualenv in .venv
# (mlwatchd's top-level `daemon` package would clash with python-daemon in a
# shared environment) and installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench soak fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The lab (daemon/lab/: demo, soak, bench, embedded broker, ART) is the `lab`
# extra; `test` includes it plus pytest, ruff and mypy.
$(VENV)/.installed-lab: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[lab]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-lab

## make demo: embedded broker + built-in traffic with attacks + the daemon; prints findings
demo: $(VENV)/.installed-lab
	$(BIN)/mlwatchd demo

## make lint: ruff on the three packages and tests/, mypy --strict on the three packages
lint: $(VENV)/.installed-test
	$(BIN)/ruff check daemon detectors playbooks tests
	$(BIN)/mypy --strict daemon detectors playbooks

## make test: lint, then the whole test suite (unit, layering, conformance, detector
## families, real-broker integration)
test: lint
	$(BIN)/python -m pytest

## make bench: throughput of mlwatchd run against a bare kafka-python consumer
bench: $(VENV)/.installed-lab
	$(BIN)/mlwatchd bench

## make soak: proof under faults (1M events, 1M flood principals, 10k poison, 3 replicas,
## 20 kill -9, scale-out/in, Slack 429/5xx); long. Smaller: make soak SOAK_ARGS="--events 50000"
SOAK_ARGS ?=
soak: $(VENV)/.installed-lab
	$(BIN)/mlwatchd soak $(SOAK_ARGS)

## make fuzz: the decoder fuzzer, 1M seeded inputs (the suite runs 20,000); FUZZ_ARGS="--seed 3"
FUZZ_ARGS ?=
fuzz: $(VENV)/.installed-test
	$(BIN)/python tests/fuzz/fuzz_decoder.py --inputs 1000000 $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
