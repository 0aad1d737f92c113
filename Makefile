# The two commands a user needs: `make demo` (main job) and `make test` (whole suite).
PYTHON ?= python3
export HF_HUB_OFFLINE = 1

.PHONY: setup build demo test check-cuda wheels gpu

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

build: setup
	$(PYTHON) scripts/build_kernel.py

demo: build
	$(PYTHON) examples/generate.py --compare

test: build
	$(PYTHON) -m pytest

check-cuda:
	$(PYTHON) scripts/build_kernel.py --check-cuda --resource-usage

# Developers: copy the wheels of both pairs next to the tree for the GPU machine (carried as .whl;
# scripts/gpu_run.sh --pair 5.25|5.22 installs one set): .whl/522/ transformers 5.22.2 + kernels 0.17.2,
# .whl/525/ transformers 5.25.0 + kernels 0.19.1 + huggingface-hub 2.4.0 and their dependencies; .whl/nb/
# the notebook runner (nbclient, nbformat, ipykernel and their dependencies, for the GPU machine's Python 3.12,
# from PyPI) for scripts/gpu_notebook.sh, which installs those the machine lacks.
NB_WHEELS = nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0
wheels:
	rm -rf .whl/522 .whl/525 .whl/nb && mkdir -p .whl/522 .whl/525 .whl/nb
	cp ../shared/wheels/*.whl .whl/522/
	cp ../shared/wheels/transformers-5.25/*.whl .whl/525/
	$(PYTHON) -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux1_x86_64 -d .whl/nb $(NB_WHEELS)
