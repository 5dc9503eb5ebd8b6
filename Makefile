# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO   ?= demo_out
NP     ?= 2

.PHONY: demo test bench bench-gpu clean

# The package goes in editable (pip install -e): the checkout's code is what runs, and its
# top-level scripts and `python -m losslandscape.<script>` run the same modules.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Train a small CNN on scikit-learn's bundled digits, then draw its loss landscape.
demo: $(VENV)/.installed
	PY=$(PY) bash demo.sh $(DEMO)

test: $(VENV)/.test-installed
	$(PY) -m pytest -q -rs tests

# Speed: ratios measured side by side in one run (never part of `make test`).
bench: $(VENV)/.test-installed
	# The naive loop, plot_surface.py's defaults (chosen on this machine), the old defaults, the best
	# float32 flags and --amp, side by side in one run.
	$(PY) benchmarks/bench_surface.py --levers "" "--compute_config plain" "--channels_last --batch_size 64 --fold_bn" \
		" --amp" --mpi_levers "" "--channels_last --batch_size 64 --fold_bn" --mpi
	# Evaluation on a budget: every point on the images --target_stderr 0.01 chooses at the centre,
	# whole runs (the search included) against the full data's.
	$(PY) benchmarks/bench_surface.py --levers "" "--target_stderr 0.01" --skip_naive \
		--json benchmarks/out/bench_surface_target_stderr.json
	# What the standard errors and the paired rise cost a point.
	$(PY) benchmarks/bench_standard_errors.py
	# What keeping diverged points diverged costs the fused, folded model (compute/bn_folding.py).
	$(PY) benchmarks/bench_divergence_guard.py
	$(PY) benchmarks/bench_hessian.py
	$(PY) benchmarks/bench_io.py --grids 41 201
	# Memory of a GPT-2 surface (124M and 355M, from their configs) per --dir_mode, as a multiple of the model's bytes.
	$(PY) benchmarks/bench_memory.py
	# PyHessian, for the comparison only: in the benchmark's own folder, never a dependency.
	test -d benchmarks/out/pyhessian/pyhessian || $(PY) -m pip install -q --no-deps --target benchmarks/out/pyhessian pyhessian==0.1
	$(PY) benchmarks/bench_spectrum.py

# The GPU figures (needs a CUDA GPU; see benchmarks/gpu_check.sh).
bench-gpu: $(VENV)/.test-installed
	PYTHON=$(PY) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(DEMO) .pytest_cache
