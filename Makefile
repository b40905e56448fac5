# Two commands a new user needs: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Quiet TensorFlow's C++ start-up chatter; warnings and errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-team test-spark test-all install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

## The main job on the built-in synthetic set: train, register, promote, check robustness
## (./mlflow.db + ./mlruns), leaving models:/deepfake-detector@champion. Run again, it reuses every
## step that finished with the same inputs; DEMO_PARAMS="-P force=true" redoes them.
demo: $(BIN)/.installed
	$(BIN)/mlflow run . --env-manager local --experiment-name dfk $(DEMO_PARAMS)
	@echo "Open the MLflow UI:  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db  ->  http://127.0.0.1:5000"

## The default test suite (fast; about 9 minutes on 2 cores), spread over TEST_WORKERS processes
## (pytest-xdist; each test has its own folder, MLflow store and free ports).
TEST_WORKERS ?= 2
test: $(BIN)/.installed
	$(BIN)/pytest -n $(TEST_WORKERS) -m "not slow and not integration"

## A team's setup for real: PostgreSQL (Debian's package), mlflow server, basic-auth (a few minutes).
test-team: $(BIN)/.installed
	$(BIN)/pytest -m integration

## Batch scoring on Spark in local mode (`dfk score-spark`): PySpark, the `spark` extra, and a Java
## runtime, 17 or later (Debian: apt-get install default-jre-headless); about two minutes.
test-spark: $(BIN)/.installed $(BIN)/.spark-installed
	$(BIN)/pytest -m spark

$(BIN)/.spark-installed: pyproject.toml
	$(BIN)/pip install --quiet -e ".[test,spark]"
	touch $@

## Everything, slow learning and integration tests included (what CI runs after `make test`).
test-all: $(BIN)/.installed
	$(BIN)/pytest

clean:
	rm -rf $(VENV) mlruns mlflow.db .mlflow.db.lock checkpoints optuna.db
