# The README's commands. A fresh machine needs only Python 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel keeps set-up to seconds; users with a GPU install their own torch (see README).
TORCH_SPEC ?= torch==2.13.0
WORKDIR ?= runs/demo

.PHONY: setup demo test test-all docs bench clean

$(BIN)/booru-embed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,index,onnx,app,docs]"
	touch $(BIN)/booru-embed

setup: $(BIN)/booru-embed

demo: setup
	$(BIN)/booru-embed demo --workdir $(WORKDIR)

test: setup
	$(BIN)/python -m pytest -n 2 -q

test-all: setup
	$(BIN)/python -m pytest -n 2 -q -m "not gpu"

# The documentation site (docs/, mkdocs.yml) into site/, offline; --strict: any warning fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: setup
	$(BIN)/python bench/bench_build_dataset.py
	$(BIN)/python bench/bench_tokenizer.py
	$(BIN)/python bench/bench_model.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_embed.py
	$(BIN)/python bench/bench_app_completion.py
	$(BIN)/python bench/bench_index.py

clean:
	rm -rf $(VENV) runs site
