#!/usr/bin/env bash
# The trainer's GRPO step on one GPU (H100 / H200) in about 10 minutes: bench.size=real (random weights of
# Qwen2.5-VL-3B + the paper's LoRA and of Qwen2.5-VL-7B, built from the configs that ship in the package,
# nothing downloaded), perf=plain, perf=fast and perf=fast + perf.compiled_decode, each its own row; the phase
# checks are left out (they take minutes more at this size: bench.phases=[critic,train] runs two of them).
#   scripts/gpu_wheels.sh                        # here, once: what the bare GPU machine lacks, into .whl/
#   scripts/gpu_bench.sh                         # there, with .whl carried; results in $OUT
#   GPU_BENCH_SIZE=mid scripts/gpu_bench.sh      # the same script on a CPU: every real shape, 2 layers
#   GPU_BENCH_SIZE=tiny scripts/gpu_bench.sh     # or the tiny models, a check of the script in a minute
# Results: $OUT/bench.json (written after each path, so a run cut off keeps what it measured), bench.log,
# env.txt (versions, the card). Extra arguments go to the bench, e.g. bench.reps=3.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_bench}
SIZE=${GPU_BENCH_SIZE:-real}
PYTHON=${PYTHON:-python3}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-540}  # seconds: inside a 10-minute command, with time to copy the results
RUN=${RUN_DIR:-/tmp/coz_gpu_bench}
mkdir -p "$OUT" "$RUN"

if compgen -G ".whl/*.whl" > /dev/null; then  # the wheels of scripts/gpu_wheels.sh, over the machine's own
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/coz_site .whl/*.whl
  export PYTHONPATH=/tmp/coz_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # coz_train from this checkout (its conf/ beside it)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export COZ_TRAIN_CACHE=${COZ_TRAIN_CACHE:-$RUN/cache}  # the random models are built here once (~24 GB at real)

# seconds: every import the bench needs and the seams the perf switches use (coz_train.perf.capabilities), before any build
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/env.txt"
import platform, torch, transformers, trl, peft, datasets, hydra
from coz_train.perf.capabilities import seam_report
import coz_train.bench.run  # noqa: F401
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__,
      "trl", trl.__version__, "peft", peft.__version__, "datasets", datasets.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "cpus", __import__("os").cpu_count())
changed = [f"{s.name}: {s.why}" for s in seam_report() if not s.holds]
if changed:
    raise SystemExit("perf seams changed in this environment: " + "; ".join(changed)
                     + " (run scripts/gpu_wheels.sh and carry .whl)")
PY

set +e
timeout "$BENCH_TIMEOUT" "$PYTHON" -m coz_train.bench bench.size="$SIZE" "bench.phases=[]" bench.compiled_decode=true \
  bench.reps=2 hydra.run.dir="$RUN/bench" "$@" 2>&1 | tee "$OUT/bench.log"
status=${PIPESTATUS[0]}
set -e
cp "$RUN/bench/bench.json" "$OUT/bench.json" 2>/dev/null || echo "no bench.json was written" >&2
[ "$status" -eq 124 ] && echo "the bench ran past ${BENCH_TIMEOUT} s: bench.json holds the paths that finished" >&2
exit "$status"
