"""The gold reward of the RLHF example (tasks/cheerful.yaml): what the learned reward
model is a proxy for. 1 for one plain sentence: 4 to 10 words, no word of four or more
letters repeated, only letters, spaces and commas, and a period at the end; else 0 with
the first rule it breaks.

Reads {"prompt", "completion", <record fields>} as JSON on stdin; prints
{"score": x, "reason": "..."}.
"""
import json
import sys

job = json.loads(sys.stdin.read())
text = job["completion"].strip()
words = text.rstrip(".").replace(",", " ").lower().split()


def verdict():
    if not text.endswith("."):
        return "does not end with a period"
    body = text[:-1]
    for ch in body:
        if not (ch.isalpha() or ch in " ,"):
            return "has a character other than letters, spaces and commas"
    if not 4 <= len(words) <= 10:
        return "has %d words (4 to 10 wanted)" % len(words)
    long_words = [w for w in words if len(w) >= 4]
    if len(set(long_words)) < len(long_words):
        return "repeats a word"
    return None


why = verdict()
print(json.dumps({"score": 0.0 if why else 1.0, "reason": why or "a plain sentence"}))
