#!/usr/bin/env bash
# The package as a user installs it: build the wheel (`pip wheel`), install it into a fresh virtual
# environment outside the source tree, and from a folder outside the tree run the first demo stages,
# a short `booru-embed train --config tiny` and the rendering of the model card `publish` sends.
# Exits non-zero on the first failure. PYTHON and TORCH_SPEC as in the Makefile.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*"; }

# Nothing from the source tree may leak in: no PYTHONPATH, a private offline Hugging Face cache.
unset PYTHONPATH
export HF_HOME="$TMP/hf" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

step "copy the source (no build/, *.egg-info or venv) to $TMP/src"
mkdir "$TMP/src"
tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=runs --exclude=build --exclude=dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.whl -cf - . | tar -C "$TMP/src" -xf -

step "fresh virtual environment $TMP/venv; $TORCH_SPEC (CPU wheel)"
"$PYTHON" -m venv "$TMP/venv"
VENV_PY="$TMP/venv/bin/python"
# --no-compile: byte-compiling all of torch and transformers at install costs more CPU than the
# few modules the checks import compile on first use.
"$VENV_PY" -m pip install --quiet --no-compile "$TORCH_SPEC"

step "pip wheel --no-deps (isolated build)"
"$VENV_PY" -m pip wheel --quiet --no-deps -w "$TMP/dist" "$TMP/src"
WHEEL="$(ls "$TMP"/dist/booru_embed-*.whl)"
echo "built $(basename "$WHEEL")"

step "install the wheel"
"$VENV_PY" -m pip install --quiet --no-compile "$WHEEL"

mkdir "$TMP/work"
cd "$TMP/work"
BIN="$TMP/venv/bin"

step "the installed package reads its own configs and card template"
"$VENV_PY" - "$REPO" <<'EOF'
import sys
from pathlib import Path

import booru_embed
from booru_embed.resources import hub_configs, model_card_template, model_config_names, model_config_path

repo = Path(sys.argv[1]).resolve()
package = Path(booru_embed.__file__).resolve().parent
assert "site-packages" in package.parts, f"booru_embed imported from {package}, not from the installed wheel"
assert repo not in package.parents, f"booru_embed imported from the source tree: {package}"
folder = Path(str(hub_configs()))
assert folder == package / "hub_configs", folder
assert {"tiny", "small", "base"} <= set(model_config_names()), model_config_names()
assert Path(str(model_config_path("tiny"))).is_file()
assert "{{metrics_table}}" in model_card_template()
print(f"booru_embed from {package}; configs {', '.join(model_config_names())} in {folder}")
EOF

step "booru-embed demo --posts 2000 --max-steps 3 --stop-after train"
"$BIN/booru-embed" demo --workdir "$TMP/demo" --posts 2000 --max-steps 3 --stop-after train
test -f "$TMP/demo/model/model.safetensors"

step "booru-embed train --config tiny (1 step)"
"$BIN/booru-embed" train --config tiny --dataset "$TMP/demo/data" --tokenizer "$TMP/demo/tokenizer" \
    --output "$TMP/train" --max-steps 1 --batch-size 16 --eval-posts 0 --num-workers 0 --no-progress
test -f "$TMP/train/model.safetensors"

step "a wrong --config name is a one-line usage error (exit 2)"
set +e
"$BIN/booru-embed" train --config tinny --dataset "$TMP/demo/data" --tokenizer "$TMP/demo/tokenizer" \
    --output "$TMP/wrong" 2>"$TMP/wrong.err"
code=$?
set -e
cat "$TMP/wrong.err"
test "$code" -eq 2
test "$(wc -l <"$TMP/wrong.err")" -eq 1
grep -q "choose one of base, small, tiny" "$TMP/wrong.err"

step "the model card publish would send"
"$VENV_PY" - "$TMP/train" <<'EOF'
import sys

from booru_embed.publish import check_model_dir, render_model_card

check_model_dir(sys.argv[1])
card = render_model_card(sys.argv[1], "ci/booru-embed-smoke")
assert "{{" not in card and "# booru-embed-smoke" in card and "| config | tiny |" in card, card
print(f"model card: {len(card.splitlines())} lines, no placeholder left")
EOF

step "wheel smoke test passed"
