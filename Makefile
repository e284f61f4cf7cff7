# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from the pin: a fresh resolver would otherwise pick a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

DATA ?= ../shared/data/medmnist/pneumoniamnist.npz

# The main job on real data: a conditional VAE on PneumoniaMNIST, the domain feature
# network, the evaluation against the real test split, and the HTML report.
demo: $(STAMP)
	@set -e; \
	run=$$($(BIN)/medsynth train configs/cvae_pneumonia.yaml name=demo data.path=$(DATA) | tee /dev/stderr | tail -n 1); \
	feats=$$($(BIN)/medsynth features train --data $(DATA) | tail -n 1); \
	echo "feature network: $$feats"; \
	$(BIN)/medsynth evaluate --real $(DATA) --fake $$run --features $$feats; \
	page=$$($(BIN)/medsynth report $$run); \
	echo; echo "demo done. samples: $$run/samples.png  reconstructions: $$run/reconstructions.png"; \
	echo "metrics: $$run/evaluation.json  report: $$page"

# Two pytest workers of one thread each: most tests run small convolutions that a second thread
# barely speeds up, so two at a time roughly halves the suite on 2 cores (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/diversity_speed.py
	$(BIN)/python benchmarks/evaluate_speed.py

clean:
	rm -rf $(VENV) runs
