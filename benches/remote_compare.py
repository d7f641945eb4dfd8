#!/usr/bin/env python3
"""The same chat through Concierge's in-process engine and through a real
OpenAI-compatible server on 127.0.0.1 (llama-cpp-python's), side by side.

    python3 benches/remote_compare.py [CONCIERGE_BINARY] [--model FILE]
        [--python PYTHON] [--questions N]

Needs `pip install 'llama-cpp-python[server]'` for PYTHON (default python3);
without it, says so and exits 0. Starts `PYTHON -m llama_cpp.server` on a free
port with FILE (default models/SmolLM2-135M-Instruct.Q8_0.gguf) and 2 threads,
then runs `concierge chat` once per question with each engine (greedy, 64
tokens, no knowledge base, a fresh data directory each time). Prints JSON:
per engine, the medians of the time from sending the question to the first
text on stdout, and of the delivered decode rate ((tokens - 1) / (last chunk -
first chunk)).
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chat_overhead import QUESTIONS, one_reply  # noqa: E402


def argument(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "target/release/concierge"
    model = argument("--model", "models/SmolLM2-135M-Instruct.Q8_0.gguf")
    python = argument("--python", "python3")
    count = int(argument("--questions", len(QUESTIONS)))
    probe = subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True)
    if probe.returncode != 0:
        print(json.dumps({"skipped": f"{python} has no llama_cpp.server: pip install 'llama-cpp-python[server]'"}))
        return
    port = free_port()
    server = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                               "--port", str(port), "--n_threads", "2", "--model_alias", "bench"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/models", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("llama_cpp.server did not start")
                time.sleep(0.5)
        common = dict(os.environ, CONCIERGE_KNOWLEDGE_DEMO="false", CONCIERGE_ENGINE_TEMPERATURE="0",
                      CONCIERGE_ENGINE_MAX_TOKENS="64", CONCIERGE_LOG_FORMAT="json",
                      CONCIERGE_OPERATOR_ENABLED="false", RUST_LOG="concierge=info")
        engines = {
            "in_process": dict(common, CONCIERGE_ENGINE_MODEL_PATH=model, CONCIERGE_ENGINE_THREADS="2"),
            "llama_cpp_server": dict(common, CONCIERGE_ENGINE_BACKEND="openai", CONCIERGE_ENGINE_BASE_URL=base,
                                     CONCIERGE_ENGINE_MODEL="bench"),
        }
        figures = {}
        for name, env in engines.items():
            first, rates = [], []
            for question in QUESTIONS[:count]:
                rate, _, _, seconds = one_reply(binary, env, question)
                first.append(seconds * 1000)
                rates.append(rate)
            figures[name] = {
                "replies": len(first),
                "first_text_ms_median": round(statistics.median(first), 1),
                "delivered_tok_per_sec_median": round(statistics.median(rates), 1),
            }
        print(json.dumps({"model": model, "engines": figures}, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
