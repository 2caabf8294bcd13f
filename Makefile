# `make test` and `make demo` set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint torch parity

venv: $(STAMP)

# The pinned dependencies, then the package itself (editable; the ib-attention command), built offline.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Optional extra: CPU PyTorch for the official-checkpoint loader and baselines.
torch: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-torch.txt

# Forward, baseline, train-step (float32 here, float64 in a child with jax_enable_x64) and schedule fixtures.
parity: $(STAMP)
	$(PY) -m ib_attention_jax.interop.parity tests/fixtures/official_parity/*.json \
	  tests/fixtures/baselines_parity/*.json tests/fixtures/official_train_step/*.json

demo: $(STAMP)
	$(PY) -m experiments.main --config=experiments/configs/quickstart.py --workdir=workdir/quickstart \
	  --config.data_dir=workdir/tensorflow_datasets
