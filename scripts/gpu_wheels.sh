#!/usr/bin/env bash
# The Python packages a bare GPU machine (python3.12 with torch, but not this project's stack) lacks, as
# wheels in .whl/ (ignored by .gitignore), at the versions the test suite passes with (.ci/constraints.txt). Run it
# here, where pip reaches the package index; scripts/gpu_bench.sh installs them there. ~16 MB.
#   scripts/gpu_wheels.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
pin() { grep -i "^$1==" .ci/constraints.txt; }
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl "$(pin transformers)" "$(pin trl)" "$(pin peft)" "$(pin datasets)" "$(pin hydra-core)" "$(pin omegaconf)" \
  "$(pin dill)" "$(pin multiprocess)" "$(pin fsspec)" "$(pin regex)"
# antlr4-python3-runtime (hydra's parser) ships as a source archive only: built into a wheel here (pure Python)
"$PYTHON" -m pip wheel -q --no-deps -w .whl "$(pin antlr4-python3-runtime)"
ls -l .whl
