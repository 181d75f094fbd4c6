# gatewayd: two commands for a newcomer — `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed

# Until the daemon exists: decode every fixture and show it converted to the other
# formats (a conversion the target format cannot carry is refused, with the reason),
# then submit them all to a local setup in ./run and show its queues.
run: $(VENV)/.installed
	@for f in fixtures/medvri/*.edi fixtures/hl7/*.hl7 fixtures/xml/*.xml; do \
	  echo "=== $$f"; $(BIN)/gatewayctl inspect "$$f" || exit 1; \
	  for to in edifact hl7 xml; do \
	    echo "--- as $$to:"; \
	    $(BIN)/gatewayctl convert --to $$to "$$f" 2>&1 | tr '\r' '\n' | cut -c1-120 | head -n 12; \
	  done; echo; \
	done
	@test -f run/gatewayd.toml || $(BIN)/gatewayctl init run
	@echo "=== the engine: every fixture submitted to the local setup in ./run"
	@for f in fixtures/medvri/*.edi fixtures/hl7/*.hl7 fixtures/xml/*.xml; do \
	  $(BIN)/gatewayctl -c run/gatewayd.toml submit "$$f" | tail -n +2; \
	done
	$(BIN)/gatewayctl -c run/gatewayd.toml stats

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-test
	$(BIN)/python bench/codecs.py

clean:
	rm -rf $(VENV) *.egg-info .hypothesis run
