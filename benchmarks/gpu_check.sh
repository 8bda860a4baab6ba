#!/usr/bin/env bash
# The probe on one GPU (< 8 min on an H100); --smoke runs the same script on CPU in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
