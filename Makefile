# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
# Each creates the virtual environment .venv with every dependency when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint benchmark-dubai benchmark-c2f benchmark-infer benchmark-real benchmark-ktda benchmark-semi clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geodistill demo --overwrite

# One pytest worker per core (pytest-xdist); each test runs torch on one thread (conftest.py).
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n auto

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

benchmark-dubai: $(STAMP)
	$(BIN)/python benchmarks/dubai_supervised.py

benchmark-c2f: $(STAMP)
	$(BIN)/python benchmarks/dubai_coarse_to_fine.py
	$(BIN)/python benchmarks/demo_coarse_to_fine.py

benchmark-infer: $(STAMP)
	$(BIN)/python benchmarks/inference.py

benchmark-real: $(STAMP)
	$(BIN)/python benchmarks/real_scenes.py

benchmark-ktda: $(STAMP)
	$(BIN)/python benchmarks/teacher_cache.py --threads 1 --fmm
	$(BIN)/python benchmarks/ktda_dubai.py
	$(BIN)/python -m pip install --quiet ".[examples]"
	$(BIN)/python benchmarks/onnx_teacher.py --threads 1

# The demo's teachers are the given ones of the demo data set: `make demo` writes them.
benchmark-semi: $(STAMP)
	test -f outputs/demo/runs/fine_only/base/seed0/checkpoints/best.ckpt || $(BIN)/geodistill demo
	$(BIN)/python benchmarks/semi_supervised.py --dataset dubai --threads 1 \
		--output outputs/benchmarks/semi_supervised_dubai
	$(BIN)/python benchmarks/semi_supervised.py --dataset demo --teacher-source given --threads 1 \
		--output outputs/benchmarks/semi_supervised_demo

clean:
	rm -rf $(VENV) outputs
