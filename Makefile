# Set-up is part of every target: the first run creates .venv and installs transferkit into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The main job: check the data, then a short MNIST → MNIST-M run of Source-only and DANN
# (3 epochs, one seed; a few minutes on a 2-core CPU) printed beside the paper's table.
demo: $(STAMP)
	$(BIN)/transferkit data verify
	$(BIN)/transferkit benchmark ganin2016 --pairs mnist:mnist_m --methods source_only,dann \
		--seeds 1 --epochs 3 --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
