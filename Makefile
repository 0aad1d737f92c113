# The two commands a user needs: `make demo` (main job) and `make test` (whole suite).
PYTHON ?= python3
export HF_HUB_OFFLINE = 1

.PHONY: setup build demo test check-cuda wheels gpu

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

build: setup
	$(PYTHON) scripts/build_kernel.py

demo: build
	$(PYTHON) examples/generate.py

test: build
	$(PYTHON) -m pytest

check-cuda:
	$(PYTHON) scripts/build_kernel.py --check-cuda --resource-usage

# Developers: copy the pinned wheels next to the tree for the GPU machine (carried as .whl).
wheels:
	mkdir -p .whl && cp ../shared/wheels/*.whl .whl/
