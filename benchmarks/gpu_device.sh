#!/usr/bin/env bash
# The GPU check on the device machine, in one command (issue 21.6):
#
#   here:    python benchmarks/gpu_bundle.py            # the wheels the device image lacks -> .whl/gpu (13, 4.8 MiB)
#   device:  run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=540)
#
# There: the workplace's CUDA image (python3 3.12 with torch and triton; no network) gets tensordict, torchrl, hydra and
# gymnasium from the carried wheels (pip, no index, no dependency resolution), this tree on PYTHONPATH, then
# benchmarks/gpu_check.py writes its table to $OUT/gpu.md and its log to $OUT/gpu_check.log (both come back).
# Extra arguments go to gpu_check.py (e.g. --budget 240). Rehearsal on a CPU machine, in a venv holding torch alone:
#   GPU_PYTHON=/tmp/bare/bin/python GPU_WHEELS=/tmp/whl311 OUT=/tmp/out bash benchmarks/gpu_device.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.whl/gpu}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  echo "== machine"; date -u; nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"; nproc
  echo "== wheels from $WHEELS"
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $WHEELS: run python benchmarks/gpu_bundle.py here and carry .whl"; exit 2
  fi
  "$PY" -m pip install --no-index --no-deps --quiet --disable-pip-version-check "$WHEELS"/*.whl || exit 3
  "$PY" - <<'EOF' || exit 4
import sys, torch, tensordict, torchrl, hydra, gymnasium
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "| tensordict", tensordict.__version__,
      "| torchrl", torchrl.__version__)
import tphys.envs, rl.experiment  # noqa: F401  (every import the check makes)
print("tphys and rl import")
EOF
  echo "== gpu_check $*"
  "$PY" benchmarks/gpu_check.py --out "$OUT/gpu.md" "$@"
} 2>&1 | tee "$OUT/gpu_check.log"
