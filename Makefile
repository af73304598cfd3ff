# Two entry points (see README): `make demo` (toy-world EZSD end to end) and `make test`.
# Both create .venv with python3 -m venv when it is missing and install the exact pins of requirements.lock.
VENV   ?= .venv
PY     := $(VENV)/bin/python
EZSD   := $(VENV)/bin/ezsd
STAMP  := $(VENV)/.ezsd-installed
SPLIT  ?= toy_coco
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export FIFTYONE_DO_NOT_TRACK ?= true
export MPLBACKEND ?= Agg

.PHONY: setup setup-cu126 cu126-lock demo test test-fast lab toyworld reproduce-toy clean-runs

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# V100 nodes (compute capability 7.0): the lock's torch is a CUDA 13 build, which has no sm_70 kernels.
# The same torch and torchvision versions built for CUDA 12.6 (the last CUDA 12 build that keeps Volta;
# torch 2.14 is the last release with CUDA 12 wheels), every other pin unchanged. Not run on a V100 here.
CUDA13_PINS := ^(torch|torchvision|triton|cuda-[a-z-]+|nvidia-[a-z0-9-]+)==
TORCH_PIN   := $(shell grep -E '^torch==' requirements.lock)
VISION_PIN  := $(shell grep -E '^torchvision==' requirements.lock)

cu126-lock:  # the pins setup-cu126 installs besides torch and torchvision
	@grep -v -E '$(CUDA13_PINS)' requirements.lock

setup-cu126:
	test -x $(PY) || python3 -m venv $(VENV)
	$(MAKE) -s cu126-lock > $(VENV)/requirements-cu126.txt
	$(PY) -m pip install --quiet $(TORCH_PIN) $(VISION_PIN) --index-url https://download.pytorch.org/whl/cu126  # first: the rest must not pull the CUDA 13 build
	$(PY) -m pip install --quiet -r $(VENV)/requirements-cu126.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_arch_list())"
	touch $(STAMP)

toyworld: $(STAMP)
	$(EZSD) toyworld data/toy --seed 0

demo: toyworld
	$(EZSD) run params/$(SPLIT).yaml
	$(EZSD) report params/$(SPLIT).yaml

reproduce-toy: toyworld
	$(EZSD) ablate params/toy_coco.yaml
	$(EZSD) run params/toy_lvis.yaml
	$(EZSD) report params/toy_lvis.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root,)

clean-runs:
	rm -rf runs/
