#!/usr/bin/env bash
# Side-by-side engine figures in one run: for each file, Concierge's CPU
# engine, mistral.rs (both through `concierge bench engine`) and llama.cpp
# (benches/llama_cpp_compare.py), one after the other. Prints one JSON object
# per line. The files: the default model as Concierge prepares it (Q8_0) and
# a Q4_0 file made from it with `concierge models convert --to q4_0`.
# Usage: benches/compare.sh [CONCIERGE_BINARY] [PYTHON_WITH_LLAMA_CPP]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${1:-target/release/concierge}"
python="${2:-python3}"
runs="${RUNS:-5}"
tokens="${MAX_TOKENS:-64}"
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
q8=models/SmolLM2-135M-Instruct.Q8_0.gguf
q4=models/SmolLM2-135M-Instruct.Q4_0.gguf
[[ -f "$q8" ]] || "$bin" --data-dir "$data" models convert >&2
[[ -f "$q4" ]] || "$bin" --data-dir "$data" models convert --input "$q8" --output "$q4" --to q4_0 >&2
for model in "$q8" "$q4"; do
  for backend in cpu mistralrs; do
    "$bin" --data-dir "$data" bench engine --backend "$backend" --model "$model" \
      --runs "$runs" --max-tokens "$tokens" 2>/dev/null | tr -d '\n '; echo
  done
  "$python" benches/llama_cpp_compare.py "$model" --runs "$runs" --max-tokens "$tokens" | tr -d '\n'; echo
done
