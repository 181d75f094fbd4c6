# gatewayd: two commands for a newcomer — `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed

# The gateway on a working local default: a setup in ./run (made once: configuration,
# sample route tables, identities, the key file, a development CA and certificates), then gatewayd
# in the foreground on 127.0.0.1 (Ctrl-C stops it).
run: $(VENV)/.installed
	@test -f run/gatewayd.toml || $(BIN)/gatewayctl init run
	$(BIN)/gatewayd -c run/gatewayd.toml

# Every fixture decoded and converted to the other formats (a conversion the target
# format cannot carry is refused, with the reason).
demo: $(VENV)/.installed
	@for f in fixtures/medvri/*.edi fixtures/hl7/*.hl7 fixtures/xml/*.xml; do \
	  echo "=== $$f"; $(BIN)/gatewayctl inspect "$$f" || exit 1; \
	  for to in edifact hl7 xml; do \
	    echo "--- as $$to:"; \
	    $(BIN)/gatewayctl convert --to $$to "$$f" 2>&1 | tr '\r' '\n' | cut -c1-120 | head -n 12; \
	  done; echo; \
	done

# Three test files at a time (most tests wait on real daemons and clients, not on the CPU).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

bench: $(VENV)/.installed-test
	$(BIN)/python bench/codecs.py

clean:
	rm -rf $(VENV) *.egg-info .hypothesis run
