# The front door: `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= outputs/demo
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install demo test test-fast lint format bench clean

install: $(STAMP)

# The venv is rebuilt when pyproject.toml changes. torch/torchvision ranges admit the
# 2.14.1 / 0.29.1 wheels; the package itself is installed editable with test and sweep extras.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep]"
	touch $(STAMP)

demo: install
	$(BIN)/sam-train experiment=demo_mae hydra.run.dir=$(DEMO)/mae
	@echo "stage 1 results: $(DEMO)/mae (reconstructions/final.png, export/encoder.safetensors, csv/metrics.csv)"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check sam_train data_prep tests benchmarks
	$(BIN)/ruff format --check sam_train data_prep tests benchmarks

format: install
	$(BIN)/ruff check --fix sam_train data_prep tests benchmarks
	$(BIN)/ruff format sam_train data_prep tests benchmarks

clean:
	rm -rf outputs .pytest_cache build *.egg-info
