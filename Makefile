# Two entry points: `make demo` and `make test`. Both create .venv when missing and install into it with the
# pinned versions in constraints.txt (a CPU build of torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,train,dev,ray,eval,heif
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

EDGE_VENV ?= .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed
# The shipped bundles are package data: a retrained model rebuilds the edge environment too.
SOURCES := $(shell git ls-files '*.py' 'models' 2>/dev/null) pyproject.toml constraints.txt

.PHONY: install edge demo test fuzz models eval clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# The edge environment: a plain (non-editable) install of the base package with the cpu extra only.
# It must hold no torch and no onnx; the tests decode files from the full install with it.
# build/ goes too: pip builds in the tree and reuses build/lib, so a module deleted since would still ship.
$(EDGE_STAMP): $(SOURCES)
	rm -rf $(EDGE_VENV) build
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet -c constraints.txt ".[cpu]"
	@if $(EDGE_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|onnx) '; then \
		echo "error: torch or onnx found in the edge environment"; exit 1; fi
	touch $@

edge: $(EDGE_STAMP)

demo: install
	$(PY) examples/demo.py

test: install edge
	AECTL_EDGE_PYTHON=$(EDGE_VENV)/bin/python $(PY) -m pytest

# Retrain every shipped quality from scratch with its recorded recipe (train/recipes.py), export it into models/
# and record its kodak-dev figures. Many CPU hours (the stages resume, so it can span sessions); RUNS keeps them.
RUNS ?= runs/models
QUALITIES ?= 1 2 3 4 5 6 7
models: install
	for q in $(QUALITIES); do \
		$(PY) -m aectl.train.recipes build $$q --runs $(RUNS) --out models/factorized-q$$q --force || exit 1; \
	done
	$(PY) benchmarks/kodak_rate.py $(addprefix models/factorized-q,$(QUALITIES)) --record

# The README's rate-distortion table and plot: every shipped model against JPEG, WebP and AVIF on kodak-dev.
eval: install
	$(PY) -m aectl.cli.main eval --data ../shared/data/kodak-dev --baselines jpeg,webp,avif -o benchmarks/rd --force

# Bounded coverage-guided fuzzing of the .aec parser and decoder (atheris); seeds are real .aec files.
FUZZ_SECONDS ?= 120
fuzz: install
	$(PY) -m pip install --quiet atheris
	$(PY) tests/make_fuzz_corpus.py out/fuzz
	$(PY) tests/fuzz_container.py out/fuzz/bundle out/fuzz/corpus -max_total_time=$(FUZZ_SECONDS) \
		-timeout=20 -rss_limit_mb=4096 -max_len=4096
	$(PY) tests/fuzz_container.py models/factorized-q1 out/fuzz/corpus-q1 -max_total_time=$(FUZZ_SECONDS) \
		-timeout=20 -rss_limit_mb=4096 -max_len=4096

clean:
	rm -rf out build *.egg-info .pytest_cache $(EDGE_VENV)
