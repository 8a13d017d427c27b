"""Countdown (as in TinyZero): the completion must end with <answer>EXPRESSION</answer>,
an arithmetic expression that uses each of the record's `numbers` exactly once, with
+ - * / and parentheses, and equals the record's `target`.

Reads {"prompt", "completion", <record fields>} as JSON on stdin; prints
{"score": 0 or 1, "reason": "..."}. The expression is parsed with `ast` and evaluated
with exact fractions: no eval, no names, no calls, no powers.
"""
import ast
import json
import sys
from fractions import Fraction

ALLOWED_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                     ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def evaluate(node, used):
    if isinstance(node, ast.Expression):
        return evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in ALLOWED_OPERATORS:
        left, right = evaluate(node.left, used), evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return ALLOWED_OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        raise ValueError("unary minus is not allowed")
    raise ValueError("only integers, + - * / and parentheses are allowed")


def score(job):
    completion = job["completion"].split("</think>")[-1]
    start = completion.rfind("<answer>")
    end = completion.rfind("</answer>")
    if start < 0 or end < start:
        return 0.0, "no <answer>...</answer>"
    expression = completion[start + len("<answer>"):end].strip()
    if "=" in expression:
        expression = expression.split("=")[0].strip()
    if len(expression) > 200:
        return 0.0, "expression too long"
    try:
        used = []
        value = evaluate(ast.parse(expression, mode="eval"), used)
    except (SyntaxError, ValueError, RecursionError) as error:
        return 0.0, "invalid expression: " + str(error)[:80]
    if sorted(used) != sorted(job["numbers"]):
        return 0.0, "uses %s, not each of %s once" % (sorted(used), sorted(job["numbers"]))
    if value != job["target"]:
        return 0.0, "%s = %s, not %s" % (expression, value, job["target"])
    return 1.0, "%s = %s" % (expression, job["target"])


result, reason = score(json.loads(sys.stdin.read()))
print(json.dumps({"score": result, "reason": reason}))
