#!/usr/bin/env bash
# Set up a virtual environment in .venv with farm and its test tools. Idempotent.
# torch is installed first and pinned: with no torch present, a bare `torch` requirement
# pulls a multi-GB CUDA build. torch==2.13.0 comes from local disk on our CPU machines;
# on a GPU box it is the CUDA build from PyPI, which is what you want there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${FARM_TORCH:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
# serve: `farm serve` (Starlette, uvicorn). ray: `farm work --ray` and its tests (Ray Core only, no dashboard: an 80 MB wheel, 240 MB installed).
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,ray,serve]' 2>&1 | grep -v "^WARNING: Location" || true
# farm is installed editable, so its bytecode lives beside the sources; write it now, since a
# machine with PYTHONDONTWRITEBYTECODE set (ours) would otherwise compile farm on every command.
.venv/bin/python -m compileall -q farm kernels >/dev/null
.venv/bin/python -c "import farm, torch, diffusers, ray; print(f'farm {farm.__version__}: torch {torch.__version__}, diffusers {diffusers.__version__}, ray {ray.__version__}, cuda={torch.cuda.is_available()}')"
