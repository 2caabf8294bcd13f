# `make test` and `make demo` set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-jax011 demo lint torch parity

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

# The same suite on the accelerator machines' versions: Python 3.12 with jax 0.11 (requirements.txt's
# pins otherwise), in its own venv. CI runs it after `make test`.
PYTHON_NEXT ?= python3.12
JAX_NEXT := 0.11.2
VENV_NEXT := .venv-jax011
PY_NEXT := $(VENV_NEXT)/bin/python
STAMP_NEXT := $(VENV_NEXT)/.installed

$(STAMP_NEXT): requirements.txt pyproject.toml
	test -x $(PY_NEXT) || $(PYTHON_NEXT) -m venv $(VENV_NEXT)
	$(PY_NEXT) -m pip install --quiet --upgrade pip
	sed -e 's/^jax\[cpu\]==.*/jax[cpu]==$(JAX_NEXT)/' -e 's/^jaxlib==.*/jaxlib==$(JAX_NEXT)/' \
	  requirements.txt > $(VENV_NEXT)/requirements.txt
	$(PY_NEXT) -m pip install --quiet -r $(VENV_NEXT)/requirements.txt
	$(PY_NEXT) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP_NEXT)

test-jax011: $(STAMP_NEXT)
	$(PY_NEXT) -m pytest -q -n 2 tests

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
