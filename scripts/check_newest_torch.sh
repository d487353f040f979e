#!/usr/bin/env bash
# Run the whole test suite on the newest torch the package registry serves: what a new user gets
# from `pip install edvae` without scripts/setup.sh (pip resolves torch>=2.4 to the newest release;
# on Linux x86-64 that is the CUDA build, several GB with its CUDA libraries). Not part of CI;
# run it before a release and record the result in the README.
#
#   bash scripts/check_newest_torch.sh                  # the newest torch release the registry lists
#   bash scripts/check_newest_torch.sh 2.14.1           # or a given release
#   bash scripts/check_newest_torch.sh 2.15.0 -x -k kl  # arguments after the version go to pytest
#
# The throwaway virtual environment lies outside the repository, in $EDVAE_TORCH_VENV (default
# ${TMPDIR:-/tmp}/edvae-torch-<version>), and is rebuilt on every run; delete it afterwards to get
# the disk back (pip may also keep the wheels in its cache). The package is
# installed from a copy of pyproject.toml, README.md and src/ with --no-deps, and its requirements
# (with the dev and lsun extras, as scripts/setup.sh installs) by name, read from pyproject.toml, so
# that nothing is written into the repository and pip never resolves torch a second time. Needs a
# Python >= 3.11 (tomllib): $PYTHON, default python3.
#
# pip constraints: a pip configuration file may cap torch (`constraint = <file>` with, for example,
# torch<=2.14.1, so that pip takes a wheel that is already on disk). A constraint applies to every
# pip command: `torch==<newest>` would be refused, and any later resolution of edvae's torch>=2.4
# would replace the newest torch by the capped one. This script exports PIP_CONSTRAINT=/dev/null,
# which replaces the configuration file's value for its own pip commands only (an empty
# PIP_CONSTRAINT does not: pip then keeps the file's value); the configuration files stay as they
# are. `pip index versions` does not apply constraints, so the version it reports is the newest the
# configured indexes serve. The script checks that the torch it imports is the one it asked for.
#
# Prints the torch version and pytest's summary line; exits with pytest's exit code (with a
# non-zero code before pytest runs if the environment cannot be built as asked).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

version=""
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  version="$1"
  shift
fi
if [ -z "$version" ]; then
  index="$("$python" -m pip index versions torch 2>/dev/null || true)"
  version="$(printf '%s\n' "$index" | sed -n 's/^torch (\([^)]*\))$/\1/p' | head -n 1)"
  if [ -z "$version" ]; then
    echo "check_newest_torch: \`pip index versions torch\` named no version" >&2
    exit 2
  fi
fi

venv="${EDVAE_TORCH_VENV:-${TMPDIR:-/tmp}/edvae-torch-$version}"
case "$venv" in "$repo"|"$repo"/*) echo "check_newest_torch: $venv is inside the repository" >&2; exit 2;; esac
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
  echo "check_newest_torch: $venv exists and is not a virtual environment; not replacing it" >&2
  exit 2
fi
echo "check_newest_torch: torch==$version into $venv (df: $(df -h "$(dirname "$venv")" | awk 'NR == 2 {print $4}') free)"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" "torch==$version"

requirements="$("$venv/bin/python" - "$repo/pyproject.toml" <<'EOF'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
names = project["dependencies"] + project["optional-dependencies"]["dev"] + project["optional-dependencies"]["lsun"]
print("\n".join(r for r in names if re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0].lower() != "torch"))
EOF
)"
mapfile -t requirements <<< "$requirements"
"${pip[@]}" "${requirements[@]}"

copy="$venv/edvae-source"
mkdir -p "$copy"
cp -R "$repo/pyproject.toml" "$repo/README.md" "$repo/src" "$copy/"
"${pip[@]}" --no-deps "$copy"

got="$("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
if [ "${got%%+*}" != "${version%%+*}" ]; then
  echo "check_newest_torch: asked for torch $version, the environment has $got" >&2
  exit 2
fi
"$venv/bin/python" -c 'import edvae, torch; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), edvae from {edvae.__file__}")'

log="$venv/pytest.log"
cd "$repo"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "check_newest_torch: torch $got: $(tail -n 1 "$log")"
echo "check_newest_torch: pytest exit code $status (log: $log)"
exit "$status"
