# The two commands of the README:
#   make start   set up, then start the daemon on the default config (inboxes under var/)
#   make test    set up, then lint and run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup start test lint bench clean browser

setup: $(STAMP)

# The status page's browser tests drive Debian's headless chromium through Selenium (no
# browser download at test time). Installed by `make test` where missing (CI runs as root;
# `make start` does not need it); where it cannot be, this says so and those tests fail,
# loudly, rather than skipping.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium chromium-driver || echo "WARNING: chromium could not be installed;" \
		"the status page's browser tests will fail" >&2; fi

# Re-install whenever pyproject.toml changes; torch comes from the local wheel cache. The
# ray extra is installed so that the tests of Ray batches run (tests/test_ray_batch.py).
$(STAMP): pyproject.toml examples/stylebox-posterize/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,ray]' \
		-e examples/stylebox-posterize
	# pymatting compiles its numba code on first import (about 30 s) and caches it beside
	# itself: done here once, so the first photo-to-photo job does not wait for it.
	$(BIN)/python -c "import pymatting"
	touch $(STAMP)

start: setup
	$(BIN)/stylebox serve --config config/stylebox.toml

lint: setup
	$(BIN)/ruff check .

# Two pytest-xdist workers, each taking whole test files (a module's daemon or Ray instance
# starts once): most tests wait on subprocesses, daemons and browsers, so two share two
# cores well (18.6 min in one process, 11.4 min in two, on a 2-core machine).
test: lint browser
	$(BIN)/pytest -q -n 2 --dist loadfile

bench: setup
	$(BIN)/python bench/gatys_step.py
	$(BIN)/python bench/gatys_job.py
	$(BIN)/python bench/daemon_overhead.py
	$(BIN)/python bench/web_overhead.py
	$(BIN)/python bench/fast_infer.py
	$(BIN)/python bench/fast_io.py
	$(BIN)/python bench/fast_edges.py
	$(BIN)/python bench/fast_tiles.py
	$(BIN)/python bench/fast_memory.py
	$(BIN)/python bench/gpu.py
	$(BIN)/python bench/ray_batch.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
