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

.PHONY: setup demo test test-fast lab toyworld reproduce-toy clean-runs

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
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
