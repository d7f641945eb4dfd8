#!/usr/bin/env bash
# Runs `concierge bench engine` and the llama.cpp comparison on the same files,
# one after the other in one run, and prints one JSON object per measurement.
# Usage: benches/compare.sh [CONCIERGE_BINARY] [PYTHON_WITH_LLAMA_CPP]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${1:-target/release/concierge}"
python="${2:-python3}"
runs="${RUNS:-5}"
tokens="${MAX_TOKENS:-64}"
for model in models/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct.Q8_0.gguf; do
  [[ -f "$model" ]] || { echo "missing $model: run concierge models fetch / convert" >&2; exit 1; }
  "$bin" bench engine --model "$model" --runs "$runs" --max-tokens "$tokens" 2>/dev/null | tr -d '\n '; echo
  "$python" benches/llama_cpp_compare.py "$model" --runs "$runs" --max-tokens "$tokens" | tr -d '\n'; echo
done
