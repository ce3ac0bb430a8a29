# The two commands of a fresh machine:  `make demo`  and  `make test`  (see README.md).
# Both create the virtual environment .venv/ on first use, with the exact versions of constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= test,slicer,fast,report,dicom

.PHONY: demo test venv clean-venv
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# Generate a phantom CT, run the bundled cascade on it, write outputs + PNG to demo_output/ (replaced on
# each run), print Dice against the phantom's ground truth and the time taken.
demo: venv
	$(BIN)/bisc-demo --out demo_output --force

test: venv
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
