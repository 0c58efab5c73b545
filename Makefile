# Two commands from a fresh clone: `make demo` and `make test`. Each bootstraps .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast e2e chaos dashboards proto clean venv system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pdscaler demo $(DEMO_ARGS)

# Debian packages the tests use: prometheus (the end-to-end run), openssl (TLS certificates).
system-deps:
	@command -v prometheus >/dev/null && command -v openssl >/dev/null || { \
	  echo "installing prometheus and openssl (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus openssl >/dev/null; }

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop while editing (about a minute on 2 cores): every test but those marked slow (e2e,
# chaos, load, fuzz, and the others that take more than a few seconds). `make test` runs them all.
test-fast: $(STAMP) system-deps
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The end-to-end run alone: real Prometheus, emulator, pdscaler, locust burst, KEDA/HPA emulation.
e2e: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/test_e2e.py $(PYTEST_ARGS)

# Faults injected into a live scaler on loopback (Prometheus down, slow, trickling, killed; series
# dropped; a one-poll spike; metrics gone; bad config; the decision process killed), restarts that
# must adopt what runs before serving, and wall-clock jumps on an injected clock.
chaos: $(STAMP) system-deps
	$(BIN)/python -m pytest tests/test_chaos.py tests/test_faults.py tests/test_fuzz.py tests/test_first_answer.py \
	  tests/test_restarts.py tests/test_clock_jumps.py $(PYTEST_ARGS)

# Regenerate the committed Grafana dashboards (dashboards/*.json) from dashboards/build.py.
dashboards: $(STAMP)
	$(BIN)/python -m dashboards.build

# Regenerate the committed gRPC stubs after editing proto/externalscaler.proto.
proto: $(STAMP)
	$(BIN)/python -m scaler.rpc.generate

clean:
	rm -rf $(VENV) build *.egg-info
