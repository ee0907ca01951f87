#!/usr/bin/env bash
# OpenVINO for real where its plugin EP offers no device (the plugin serves Intel hardware only;
# CI's machine may be AMD): a venv with onnxruntime-openvino (OpenVINO compiled into ONNX
# Runtime; its CPU plugin runs on any x86-64 CPU) runs tests/test_providers.py with
# ONNXPRUNE_OPENVINO_REQUIRED=1, so the OpenVINO tests cannot skip. The venv is cached under
# ~/.cache/onnxprune, keyed by the pinned versions. An install that fails (offline) is
# reported and skipped; a failing test fails CI.
set -uo pipefail
cd "$(dirname "$0")/.."
if python3 -c "import sys; from onnxprune import providers as p; sys.exit('OpenVINOExecutionProvider' not in p.available())"; then
  echo "openvino_classic: the OpenVINO plugin EP runs here, so tests/test_providers.py already ran it"; exit 0
fi
PINS=$(python3 -m pip freeze 2>/dev/null | grep -iE "^(onnx|onnx-ir|onnx_ir|onnxscript|numpy|click|tqdm|ml.dtypes|protobuf|pytest|hypothesis|pillow)==")
KEY=$(printf '%s\n' "$PINS" | sha1sum | cut -c1-12)
VENV="${ONNXPRUNE_CACHE:-$HOME/.cache/onnxprune}/ov-classic-$KEY"
if [[ ! -f "$VENV/.ready" ]]; then
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" || { echo "openvino_classic: SKIPPED (cannot make a venv)"; exit 0; }
  printf '%s\n' "$PINS" > "$VENV/pins.txt"
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check -c "$VENV/pins.txt" "onnxruntime-openvino>=1.20" \
      onnx onnx-ir onnxscript numpy click tqdm pytest hypothesis pillow >"$VENV/install.log" 2>&1; then
    echo "openvino_classic: SKIPPED (pip install onnxruntime-openvino failed: $(tail -1 "$VENV/install.log"))"
    rm -rf "$VENV"; exit 0
  fi
  touch "$VENV/.ready"
fi
ONNXPRUNE_OPENVINO_REQUIRED=1 PYTHONPATH="$PWD" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_providers.py
