# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use. The CPU build of torch is installed first so that
# the package's own `torch>=2.2,<3` requirement does not pull a multi-GB CUDA build;
# on a GPU machine set TORCH_SPEC to the CUDA wheel you want (e.g. TORCH_SPEC=torch).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
# The default suite leaves out tests marked `slow` (fault injection, examples end to end) to stay
# under 10 minutes on 2 cores; CI (CI=true) and `make test-all` run every test.
ifeq ($(CI),true)
PYTEST_MARK ?=
else
PYTEST_MARK ?= -m "not slow"
endif

.PHONY: demo test test-all gpu-check venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/smartcache demo --out runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_MARK)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q

# The first run on a GPU machine (install with TORCH_SPEC=torch for a CUDA build): the CUDA tests, then
# benchmarks/gpu_pipeline.py (plan, crops/s of the host and GPU crop paths vs MONAI's fast recipe, time to
# the demo target with AMP on and off, data wait, GPU busy), all within 8 minutes; tables in one file.
GPU_CHECK_OUT ?= runs/gpu_check/gpu_check.md
gpu-check: $(VENV)/.installed
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device (install a CUDA build: make venv TORCH_SPEC=torch)')"
	timeout 120 $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_device_crops.py tests/unit/test_staging.py tests/unit/test_gpu_settings.py
	timeout 360 $(PY) benchmarks/gpu_pipeline.py --device cuda --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) runs
