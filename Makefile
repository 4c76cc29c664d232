# Two commands (see README.md):  make lab  |  make test   (and make chat: the chat app)
# Both create (or reuse) the virtual environment .venv and install requirements.txt into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup lab chat test lint colab-cells figures clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10 or newer is needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

setup: $(VENV)/.installed

lab: setup  ## open the course in JupyterLab
	$(VENV)/bin/jupyter lab notebooks

chat: setup  ## the chat app in the browser: python -m chat_app --help for its options
	$(PY) -m chat_app $(ARGS)

lint: setup
	$(PY) -m ruff check .

test: lint  ## the whole suite: unit tests and every notebook under nbval
	$(PY) -m pytest

colab-cells:  ## rewrite each notebook's Colab cell from tools/colab_cell.py
	$(PYTHON) tools/colab_cell.py

figures: setup  ## draw every diagram into notebooks/figures/ (figures/make_figures.py)
	$(PY) figures/make_figures.py

clean:
	rm -rf $(VENV) *.egg-info
