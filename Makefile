# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# Both create .venv with a Python 3.8-3.10 found by scripts/find_python.sh and
# install the package once (the stamp below makes a second run skip the install).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test venv clean help

help:
	@echo "make demo   - run the paper's pipeline on the embedded demo data"
	@echo "make test   - run the test suite"

$(PY):
	@interp=$$(sh scripts/find_python.sh) || exit 1; \
	echo "creating $(VENV) with $$interp"; \
	"$$interp" -m venv $(VENV)

$(STAMP): $(PY) setup.py
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wbc-nnabla demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
