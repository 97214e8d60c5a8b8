# The two commands: `make demo` and `make test`. Both install what is missing, build
# incrementally into build/, and work on a fresh machine with nothing but Python and root.
PYTHON ?= python3
BUILD_DIR ?= build
JOBS ?= 2
TORCH_VERSION ?= 2.13.0
APT_PACKAGES := g++ make libeigen3-dev libgtest-dev ccache
export PIP_ROOT_USER_ACTION := ignore
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export CMAKE_BUILD_PARALLEL_LEVEL := $(JOBS)
# Never let pip resolve a new torch: pin whatever torch is installed.
CONSTRAINTS := $(BUILD_DIR)/constraints.txt

.PHONY: demo test deps system-deps torch python-deps build cpp-test py-test notebooks bench clean help

help:
	@echo "make demo   - install what is missing, build, write report/index.html on MiniLM"
	@echo "make test   - install what is missing, build, run GoogleTest and pytest"
	@echo "make bench  - run the benchmarks (add QUICK=1 for --quick)"

demo: deps build
	HF_HUB_OFFLINE=1 $(PYTHON) -m llmdbg.cli demo --out report --force

test: deps build cpp-test py-test notebooks

deps: system-deps torch python-deps

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "torch==$(TORCH_VERSION)"
	@mkdir -p $(BUILD_DIR)
	@$(PYTHON) -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)

# Build tools first (the build runs without isolation), then the package with its extras.
python-deps:
	@$(PYTHON) -c "import scikit_build_core, cmake, ninja" 2>/dev/null || \
	  $(PYTHON) -m pip install -q -c $(CONSTRAINTS) "scikit-build-core>=0.10" cmake ninja

build: torch
	$(PYTHON) -m pip install -q -c $(CONSTRAINTS) --no-build-isolation \
	  -Cbuild-dir=$(BUILD_DIR)/py -e ".[test]"

cpp-test:
	cmake -S . -B $(BUILD_DIR)/cpp -G Ninja -DLLMDBG_BUILD_EXTENSION=OFF -DLLMDBG_BUILD_TESTS=ON >/dev/null
	cmake --build $(BUILD_DIR)/cpp
	ctest --test-dir $(BUILD_DIR)/cpp --output-on-failure

py-test:
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

# Notebooks run offline through nbmake (a fresh kernel each); outputs stay stripped in git.
notebooks:
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest --nbmake --nbmake-timeout=300 -p no:cacheprovider notebooks

bench:
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/capture.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/capture_gpu.py $(if $(QUICK),--quick,)
	HF_HUB_OFFLINE=1 $(PYTHON) benchmarks/attention.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(BUILD_DIR) report
