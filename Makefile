# The two commands of the README:
#   make start   set up, then start the daemon on the default config (inboxes under var/)
#   make test    set up, then lint and run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup start test lint bench clean browser

setup: $(STAMP) browser

# The status page's browser test drives Debian's headless chromium through Selenium (no
# browser download at test time). Installed here where missing (CI runs as root); where it
# cannot be, setup says so and that test fails, loudly, rather than skipping.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium chromium-driver || echo "WARNING: chromium could not be installed;" \
		"tests/test_web_browser.py will fail" >&2; fi

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

test: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/gatys_step.py
	$(BIN)/python bench/gatys_job.py
	$(BIN)/python bench/daemon_overhead.py
	$(BIN)/python bench/web_overhead.py
	$(BIN)/python bench/fast_infer.py
	$(BIN)/python bench/fast_io.py
	$(BIN)/python bench/gpu.py
	$(BIN)/python bench/ray_batch.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
