#!/usr/bin/env bash
# CPU vs CUDA (and TensorRT) parity of the digits sample model and its optimized, pruned and
# INT8 versions, in one go, with `onnxprune check` (reference on CPU and CUDA, candidate on CPU
# and CUDA, reference on CPU vs candidate on CUDA, each model on CPU vs CUDA). Prints one table;
# JSON reports land in --out. With a GPU provider it then runs bench/providers_bench.py (fp32
# and INT8 latency and fidelity per provider: the code path OpenVINO was measured with).
#
# Usage: bench/cuda_parity.sh [--providers cpu,cuda] [--out DIR] [--no-install] [--quick] [--dry-run]
#   --providers   execution providers to compare (default cpu,cuda; also tensorrt, openvino;
#                 cpu alone works anywhere)
#   --out DIR     where derived models and JSON reports go (default out/cuda_parity)
#   --no-install  never pip-install onnxruntime-gpu (fail instead when CUDA is missing)
#   --quick       only the original and the exact-optimized model (no prune/quantize)
#   --dry-run     print the commands, run nothing
#   --realmodels DIR  then the INT8 latency rows of bench/realmodels_perf.py on the first
#                 provider that is not cpu (DIR: the extracted wheels it reads)
# Needs: the package installed (pip install -e .); for CUDA an NVIDIA GPU with its driver.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
PROVIDERS="cpu,cuda"
OUT="$ROOT/out/cuda_parity"
INSTALL=1
QUICK=0
DRY=0
REALMODELS=""

say() { echo "[cuda_parity] $*" >&2; }
die() { say "error: $*"; exit 2; }

while (($#)); do
  case "$1" in
    --providers) PROVIDERS="${2:?--providers needs a value}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --quick) QUICK=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --realmodels) REALMODELS="${2:?--realmodels needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

MODEL="$ROOT/models/digits/digits.onnx"
EVAL="$ROOT/models/digits/eval.npz"
CALIB="$ROOT/models/digits/calib.npz"
[[ -f "$MODEL" && -f "$EVAL" && -f "$CALIB" ]] || die "digits sample model or data missing in models/digits (python models/digits/train.py makes them)"
command -v onnxprune >/dev/null || die "the onnxprune command is not on PATH (pip install -e '$ROOT')"

# Run a command, or only print it with --dry-run (to the real stdout: fd 3, past any redirect).
exec 3>&1
run() {
  if ((DRY)); then echo "$*" >&3; else "$@"; fi
}

has_cuda() {
  "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"
}

has_command() {
  onnxprune --help | grep -qE "^  $1 "
}

WANT_CUDA=0
[[ ",$PROVIDERS," == *",cuda,"* || ",$PROVIDERS," == *",tensorrt,"* ]] && WANT_CUDA=1
if ((WANT_CUDA && !DRY)) && ! has_cuda; then
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
    || die "CUDA requested but no NVIDIA GPU is visible (nvidia-smi); rerun with --providers cpu"
  ((INSTALL)) || die "onnxruntime here has no CUDA provider; pip install -e '.[cuda]' (or drop --no-install)"
  say "installing onnxruntime-gpu (pip install -e .[cuda]); the CPU-only onnxruntime would shadow it, so it goes"
  "$PY" -m pip install -q -e "$ROOT[cuda]" || die "pip install -e .[cuda] failed (offline? install onnxruntime-gpu by hand)"
  "$PY" -m pip uninstall -q -y onnxruntime || true
  # Both wheels write the same onnxruntime/ folder: reinstall the GPU one over what the uninstall removed.
  "$PY" -m pip install -q --force-reinstall --no-deps "onnxruntime-gpu>=1.20" || die "reinstalling onnxruntime-gpu failed"
  has_cuda || die "onnxruntime-gpu is installed but has no CUDA provider (CUDA 12 / cuDNN 9 libraries missing? pip install 'onnxruntime-gpu[cuda,cudnn]')"
fi

run mkdir -p "$OUT"
CANDIDATES=("digits.onnx=$MODEL")  # the model against itself: the providers' own drift
OPT="$OUT/digits.opt.onnx"
run onnxprune -q optimize "$MODEL" -o "$OPT" >/dev/null
CANDIDATES+=("digits.opt.onnx=$OPT")
if ((!QUICK)); then
  if has_command prune; then
    PRUNED="$OUT/digits.pruned.onnx"
    if run onnxprune -q prune "$MODEL" -o "$PRUNED" --ratio 0.3 --criterion l1 >/dev/null; then
      CANDIDATES+=("digits.pruned.onnx=$PRUNED")
    else
      say "warning: onnxprune prune failed (above); the pruned model is left out"
    fi
  else
    say "onnxprune prune is not available in this version: no pruned model"
  fi
  if has_command quantize; then
    INT8="$OUT/digits.int8.onnx"
    if run onnxprune -q quantize "$MODEL" -o "$INT8" --calib "$CALIB" --no-latency >/dev/null; then
      CANDIDATES+=("digits.int8.onnx=$INT8")
    else
      say "warning: onnxprune quantize failed (above); the INT8 model is left out"
    fi
  else
    say "onnxprune quantize is not available in this version: no INT8 model"
  fi
fi

REQUIRE=()
((WANT_CUDA)) && REQUIRE=(--require-providers)  # a silent CPU fallback would make the table lie
REPORTS=()
for entry in "${CANDIDATES[@]}"; do
  name="${entry%%=*}"
  path="${entry#*=}"
  # Pruned (no fine-tuning) and INT8 models are judged by cosine/top-1/accuracy, not elementwise.
  preset=auto
  [[ "$name" == *pruned* ]] && preset=int8
  report="$OUT/${name%.onnx}.json"
  rc=0
  run onnxprune -q check "$MODEL" "$path" --data "$EVAL" --labels labels --providers "$PROVIDERS" \
    "${REQUIRE[@]}" --preset "$preset" --json "$report" >/dev/null || rc=$?
  ((rc <= 1)) || die "onnxprune check failed on $name (exit $rc); rerun it without -q >/dev/null to see why"
  REPORTS+=("$name=$report")
done
if ((WANT_CUDA)); then
  run "$PY" "$ROOT/bench/providers_bench.py" --providers "$PROVIDERS" --quick --out "$OUT/providers.json" >&2 \
    || say "warning: bench/providers_bench.py failed (above)"
fi
((DRY)) && exit 0

"$PY" - "${REPORTS[@]}" <<'EOF'
import json
import sys

from onnxprune.report import table

rows = []
for entry in sys.argv[1:]:
    name, path = entry.split("=", 1)
    with open(path) as f:
        data = json.load(f)
    for comparison in data["comparisons"]:
        o = comparison["outputs"]["logits"]
        sqnr = "inf" if o["sqnr_db"] is None else f"{o['sqnr_db']:.1f}"
        label = comparison["name"].replace("reference", "ref").replace("candidate", "cand")
        status = ("ok" if comparison["passed"] else "FAIL") if comparison["judged"] else "(drift)"
        rows.append((name, label, f"{o['max_abs']:.3g}", f"{o['cosine']:.6f}", sqnr,
                     f"{o['top1_agreement']:.2%}",
                     f"{o['accuracy_reference']:.2%} -> {o['accuracy_candidate']:.2%}",
                     data["tolerances"]["preset"], status))
    for note in data["notes"]:
        print(f"note ({name}): {note}")
print(table(["model", "comparison", "max abs", "cosine", "SQNR dB", "top-1", "accuracy", "preset", "status"],
            rows, align="llrrrrrll"))
EOF

if [[ -n "$REALMODELS" ]]; then
  gpu=$(tr ',' '\n' <<<"$PROVIDERS" | grep -vx cpu | head -1)
  [[ -n "$gpu" ]] || die "--realmodels needs a provider other than cpu in --providers"
  full=$("$PY" -c "from onnxprune.runtime import resolve_provider; print(resolve_provider('$gpu'))")
  run "$PY" "$ROOT/bench/realmodels_perf.py" --root "$REALMODELS" --provider "$full" \
    --out "$ROOT/bench/results/realmodels_perf_${gpu}.json"
fi
