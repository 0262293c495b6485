#!/usr/bin/env bash
# Loads a saved model folder under the oldest transformers that pyproject.toml admits (and fails clearly
# under the release before it), each in a fresh venv with only torch and transformers: what a Hub user
# with that version gets from trust_remote_code. Run after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
floor=$(.venv/bin/python -c "
import re, tomllib
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']
print(next(re.fullmatch(r'transformers>=([0-9.]+)', d).group(1) for d in deps if d.startswith('transformers')))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python .ci/transformers_floor.py save "$work"
python3 -m venv "$work/venv"
pip_install() { "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install "torch==2.13.0" numpy "transformers==$floor"
export HF_HUB_OFFLINE=1 HF_HOME="$work/hf"
"$work/venv/bin/python" .ci/transformers_floor.py check "$work"
pip_install "transformers<$floor"
"$work/venv/bin/python" .ci/transformers_floor.py check-older "$work"
