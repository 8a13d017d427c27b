"""Structured output: the completion must contain one JSON object (bare or in a ```json
block) that has every key listed in the record's `required_keys`, with a non-empty
value. Scores the fraction of required keys present; 0 when there is no valid object.

Reads {"prompt", "completion", <record fields>} as JSON on stdin; prints
{"score": x, "reason": "..."}.
"""
import json
import sys


def find_object(text):
    if "```json" in text:
        text = text.split("```json")[-1].split("```")[0]
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start:end + 1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


job = json.loads(sys.stdin.read())
required = job.get("required_keys") or []
found = find_object(job["completion"])
if found is None:
    print(json.dumps({"score": 0.0, "reason": "no JSON object found"}))
elif not required:
    print(json.dumps({"score": 1.0, "reason": "valid JSON object"}))
else:
    present = [k for k in required if found.get(k) not in (None, "", [], {})]
    missing = [k for k in required if k not in present]
    reason = "all keys present" if not missing else "missing " + ", ".join(missing)
    print(json.dumps({"score": len(present) / len(required), "reason": reason}))
