#!/usr/bin/env bash
# The one-shot GPU check on a lent GPU machine with no network (issue #16), prepared to run once:
#
#   bash scripts/gpu_check_device.sh            # from the repository root; writes into $OUT (or ./gpu-check-out)
#
# What it needs there: Python 3.11+ with PyTorch (CUDA build) and the check's other packages (docs/gpu.md,
# "One-shot GPU check": nvidia-pytriton, tritonclient[grpc], open_clip_torch, psutil; no ONNX package: the
# check serves PyTorch graphs only). Missing ones are installed from wheels in $WHEELS (default: shared/wheels)
# with --no-index, never from the network. The project itself is installed from this working tree into a venv
# that sees the system's site-packages (so the system PyTorch is reused). Exit code: the check's.
set -u
OUT="${OUT:-$PWD/gpu-check-out}"
WHEELS="${WHEELS:-shared/wheels}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check_device.log") 2>&1
echo "== $(date -u) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not found"
"$PY" --version
VENV="${VENV:-/tmp/fer-gpu-check-venv}"
test -x "$VENV/bin/python" || "$PY" -m venv --system-site-packages "$VENV"
V="$VENV/bin/python"
missing=$("$V" - <<'PY'
import importlib.util as u
need = {"torch": "torch", "pytriton": "nvidia-pytriton", "tritonclient": "tritonclient[grpc]", "grpc": "grpcio",
        "open_clip": "open_clip_torch", "psutil": "psutil", "click": "click", "PIL": "pillow"}
print(" ".join(p for m, p in need.items() if u.find_spec(m) is None))
PY
)
echo "missing before install: ${missing:-none}"
if [ -n "$missing" ]; then
  if [ -d "$WHEELS" ]; then
    # nvidia-pytriton without its own Python dependencies: fer-triton runs only its tritonserver binary
    case " $missing " in *" nvidia-pytriton "*)
      "$V" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" nvidia-pytriton \
        || echo "nvidia-pytriton is not in $WHEELS";;
    esac
    rest=$(echo " $missing " | sed 's/ nvidia-pytriton / /')
    if [ -n "${rest// /}" ]; then
      "$V" -m pip install --quiet --no-index --find-links "$WHEELS" $rest || echo "some wheels are not in $WHEELS"
    fi
  else
    echo "no $WHEELS folder: cannot install $missing without a network"
  fi
fi
"$V" -m pip install --quiet --no-deps --no-build-isolation --no-index . || { echo "cannot install fer-triton here"; exit 3; }
"$V" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"
cd /tmp  # import the installed package, not the source tree
timeout 540 "$V" -I -m fer_triton gpu-check --json "$OUT/gpu_check.json" -w /tmp/fer-gpu-check-work
code=$?
cp /tmp/fer-gpu-check-work/*.log "$OUT/" 2>/dev/null
echo "== exit code $code, $(date -u)"
exit $code
