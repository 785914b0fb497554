"""Rebuild mathverify_cases.jsonl from a checkout of huggingface/Math-Verify (its tests/*.py).

    python tests/data/make_mathverify_cases.py PATH/TO/Math-Verify > tests/data/mathverify_cases.jsonl

Reads every `@pytest.mark.parametrize` list whose argument names include gold, pred and an expected verdict, with
`ast` (nothing of Math-Verify is imported or run), and writes one JSON line per case: where it comes from, the
gold and prediction strings as the test passes them, the expected verdict, and the settings the peer's test uses
(extraction targets, float rounding, strictness, set/relation comparison) so that a disagreement can be traced to
them. Only `math` may appear in a non-literal case (an f-string with math.sqrt).
"""

import ast
import json
import math
import sys
from pathlib import Path

DEFAULTS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True, "allow_set_relation_comp": False}


def literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return eval(compile(ast.Expression(node), "<case>", "eval"), {"__builtins__": {}, "math": math})


def call_settings(func: ast.FunctionDef) -> dict:
    """The keyword arguments of the compare_strings(...) call in the test body; plain parse/verify otherwise."""
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "compare_strings":
            settings = dict(DEFAULTS, api="compare_strings")
            for kw in node.keywords:
                settings[kw.arg] = literal(kw.value) if not isinstance(kw.value, ast.Name) else f"<{kw.value.id}>"
            return settings
    return {"api": "verify(parse(gold), parse(pred)) with default configs"}


def cases(path: Path):
    tree = ast.parse(path.read_text())
    for func in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        for dec in func.decorator_list:
            if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", None) == "parametrize"):
                continue
            names = [n.strip() for n in literal(dec.args[0]).split(",")]
            if not {"gold", "pred"} <= set(names):
                continue
            verdict = "expected" if "expected" in names else "result"
            settings = call_settings(func)
            for i, row in enumerate(dec.args[1].elts):
                values = dict(zip(names, (literal(v) for v in row.elts)))
                case_settings = {k: values.get(k, v) if v == f"<{k}>" else v for k, v in settings.items()}
                yield {"id": f"{path.name}::{func.name}[{i}]", "gold": values["gold"], "pred": values["pred"],
                       "expected": int(values[verdict]), "settings": case_settings}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for test_file in sorted((root / "tests").glob("test_*.py")):
        for case in cases(test_file):
            print(json.dumps(case, ensure_ascii=False))
