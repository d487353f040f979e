#!/usr/bin/env bash
# Set up .venv with edvae and its test tools. Keeps a torch >= 2.4 that is already there;
# otherwise installs torch 2.13.0 first (the CPU build where a local wheel is offered), so that
# pip does not pull the newest CUDA build as a side effect of the package's own requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))' 2>/dev/null; then
  .venv/bin/pip install -q torch==2.13.0
fi
.venv/bin/pip install -q -e ".[dev,lsun]"
# torch-fidelity, for tests/test_inception.py, which checks edvae's FID InceptionV3 against torch-fidelity's
# own. --no-deps: its declared torchvision does not load beside this torch; the modules the test loads
# need only torch and numpy (already installed above).
.venv/bin/pip install -q --no-deps torch-fidelity==0.4.0
