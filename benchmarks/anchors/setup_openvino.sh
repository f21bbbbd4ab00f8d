#!/usr/bin/env bash
# OpenVINO GenAI, the fastest runtime measured on this CPU (../shared/ANCHORS.md), in a
# virtualenv of its own: a yardstick for benchmarks/bench_engine.py, never a dependency of the
# product. torch is pinned for optimum-intel's exporter (any looser pin pulls a CUDA build).
#
#   benchmarks/anchors/setup_openvino.sh            # -> $NEWSDESK_ANCHORS_DIR/openvino
set -euo pipefail
ROOT="${NEWSDESK_ANCHORS_DIR:-$HOME/.cache/newsdesk-anchors}"
VENV="$ROOT/openvino"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$ROOT"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  openvino-genai==2026.4.1.0 "optimum-intel[openvino]==2.2.0" torch==2.13.0
# optimum pulls torchvision, which does not import beside this torch build and is not used
"$VENV/bin/pip" uninstall -y -q torchvision || true
echo "OpenVINO GenAI ready in $VENV"
