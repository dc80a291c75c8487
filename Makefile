# Two commands matter: `make run` (the dashboard) and `make test` (the whole suite).
# Both are idempotent: they create the virtual environment and install what is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
MODEL ?= models/weights/model.pt
PORT ?= 8501
# Loopback by default: patient images should not be served to the network unless an operator decides so.
ADDRESS ?= 127.0.0.1

.PHONY: run test lint bench demo-model install browser clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Chromium drives the browser tests; pdftotext (poppler-utils) reads the PDF reports back.
browser:
	@{ command -v chromium && command -v pdftotext; } >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium and poppler-utils for the browser and report tests…"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; }

demo-model: $(STAMP)
	$(PY) -m core demo-model --out $(MODEL)

# Serves at once: without a model the app builds the demo model in the background (progress on every page).
run: $(STAMP)
	ICCA_MODEL_PATH=$(MODEL) $(PY) -m streamlit run app.py --server.port $(PORT) --server.address $(ADDRESS)

test: $(STAMP) browser
	$(PY) -m ruff check .
	ICCA_TEST_POSTGRES_URL="$${ICCA_TEST_POSTGRES_URL:-$$(bash .ci/postgres.sh || true)}" $(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m core bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
