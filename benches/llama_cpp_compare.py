#!/usr/bin/env python3
"""Measures llama.cpp (llama-cpp-python) on the same GGUF file and the same
prompt as `concierge bench engine`, so BENCHMARKS.md can show both side by
side from one run.

    pip install llama-cpp-python            # builds llama.cpp (about 10 minutes on 2 cores)
    python3 benches/llama_cpp_compare.py MODEL.gguf [--runs 5] [--max-tokens 64] [--threads 2]

Prints JSON with median prompt and decode tokens per second. Each run starts
from an empty KV cache, as `concierge bench engine` does.
"""
import argparse
import json
import resource
import statistics
import time

import llama_cpp
from llama_cpp import Llama

# Keep in sync with src/bench.rs.
SYSTEM = "You are a helpful shop assistant. Answer briefly."
QUESTION = "What is the best way to keep running shoes clean after a muddy trail run?"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    llm = Llama(model_path=args.model, n_ctx=2048, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    prompt_speed, decode_speed, first_token_ms, completion = [], [], [], []
    prompt_tokens = 0
    for run in range(args.runs + 1):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        started = time.perf_counter()
        first = None
        generated = 0
        for chunk in llm.create_chat_completion(messages, max_tokens=args.max_tokens,
                                                temperature=0.0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                if first is None:
                    first = time.perf_counter() - started
                generated += 1
        perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
        if run == 0:
            continue  # warm-up
        prompt_tokens = perf.n_p_eval
        prompt_speed.append(perf.n_p_eval / (perf.t_p_eval_ms / 1000.0))
        decode_speed.append(perf.n_eval / (perf.t_eval_ms / 1000.0))
        first_token_ms.append((first or 0.0) * 1000.0)
        completion.append(perf.n_eval)
    print(json.dumps({
        "engine": "llama.cpp (llama-cpp-python %s)" % llama_cpp.__version__,
        "model": args.model,
        "runs": args.runs,
        "threads": args.threads,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": statistics.median(completion),
        "prompt_tok_per_sec": statistics.median(prompt_speed),
        "decode_tok_per_sec": statistics.median(decode_speed),
        "first_token_ms": statistics.median(first_token_ms),
        # Peak resident memory of this process (Python included), MiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }, indent=2))


if __name__ == "__main__":
    main()
