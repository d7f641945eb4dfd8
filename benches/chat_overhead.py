#!/usr/bin/env python3
"""Tokens per second as a customer sees them through `concierge chat`, next
to the engine's own decode speed for the same replies.

    python3 benches/chat_overhead.py [CONCIERGE_BINARY] [--questions N]

Runs `concierge chat` once per question (greedy, no knowledge base, so every
reply streams from the model, and a fresh conversation each time), timestamps
each chunk that reaches stdout, and reads the engine's figures from the
"reply generated" log line. Prints JSON: medians over the replies of the delivered decode rate
((tokens - 1) / (last chunk - first chunk)) and of the engine's rate.
"""
import json
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time

QUESTIONS = [
    "How long does delivery usually take?",
    "Can I change the address of my order?",
    "What is your return policy for shoes?",
    "Do you sell gift cards?",
    "How do I reset my password?",
    "Which payment methods do you accept?",
]


def one_reply(binary, env, question):
    """Runs one chat with one question; returns the delivered and the
    engine's tok/s, the prompt tokens, and the seconds from sending the
    question to the first text on stdout."""
    data = tempfile.mkdtemp()
    child = subprocess.Popen([binary, "--data-dir", data, "chat", "--user", "bench"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.set_blocking(child.stdout.fileno(), False)
    os.set_blocking(child.stderr.fileno(), False)
    log = b""
    while b"ready" not in log:
        select.select([child.stderr], [], [], 1.0)
        log += child.stderr.read() or b""
        if child.poll() is not None:
            sys.exit("concierge chat stopped before it was ready:\n" + log.decode(errors="replace"))
    sent = time.perf_counter()
    child.stdin.write((question + "\n").encode())
    child.stdin.close()
    chunks = []
    while True:
        ready, _, _ = select.select([child.stdout, child.stderr], [], [], 0.5)
        got = False
        if child.stdout in ready:
            if child.stdout.read():
                chunks.append(time.perf_counter())
                got = True
        if child.stderr in ready:
            more = child.stderr.read() or b""
            log += more
            got = got or bool(more)
        if child.poll() is not None and not got:
            break
    log += child.stderr.read() or b""
    lines = [line for line in log.splitlines() if b"reply generated" in line]
    if not lines or not chunks:
        sys.exit("no reply:\n" + log.decode(errors="replace")[-2000:])
    fields = json.loads(lines[-1]).get("fields", {})
    tokens = int(fields["completion_tokens"])
    delivered = (tokens - 1) / (chunks[-1] - chunks[0]) if len(chunks) > 1 and tokens > 1 else 0.0
    return delivered, float(fields["decode_tok_per_sec"]), int(fields["prompt_tokens"]), chunks[0] - sent


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "target/release/concierge"
    count = int(sys.argv[sys.argv.index("--questions") + 1]) if "--questions" in sys.argv else len(QUESTIONS)
    env = dict(os.environ, CONCIERGE_KNOWLEDGE_DEMO="false", CONCIERGE_ENGINE_TEMPERATURE="0",
               CONCIERGE_ENGINE_MAX_TOKENS="64", CONCIERGE_LOG_FORMAT="json", RUST_LOG="concierge=info")
    delivered, engine, prompts = [], [], []
    for question in QUESTIONS[:count]:
        shown, measured, prompt, _ = one_reply(binary, env, question)
        delivered.append(shown)
        engine.append(measured)
        prompts.append(prompt)
    print(json.dumps({
        "replies": len(engine),
        "median_prompt_tokens": statistics.median(prompts),
        "engine_decode_tok_per_sec": statistics.median(engine),
        "delivered_decode_tok_per_sec": statistics.median(delivered),
    }, indent=2))


if __name__ == "__main__":
    main()
