"""HumanEval(+) and MBPP(+): answer post-processing and pass@1 through the sandbox.

HumanEval answers are sanitized as Dream, Fast-dLLM and dLLM-Cache do (their
``postprocess_code.py`` + EvalPlus ``sanitize``); MBPP answers are run as lm-eval runs them
(completion, newline, the asserts). Execution happens in an lm-eval filter so that all of a
task's programs run in parallel; ``process_results`` only reads the verdicts.
"""

from __future__ import annotations

import ast
from dataclasses import asdict

from .sandbox import Limits, run_programs

_EXECUTION = {"workers": 4, "limits": Limits()}
MBPP_TEST_IDS = range(11, 511)
MBPP_SHOT_IDS = (2, 3, 4)


def configure_execution(workers: int = 4, timeout_s: float = 10.0) -> None:
    """Parallel workers and per-program timeout for every code task of this process."""
    if workers < 1:
        raise ValueError(f"code_workers={workers} must be >= 1")
    if timeout_s <= 0:
        raise ValueError(f"code_timeout_s={timeout_s} must be > 0")
    _EXECUTION["workers"] = workers
    _EXECUTION["limits"] = Limits(timeout_s=timeout_s)


# ------------------------------------------------------------------ sanitize (EvalPlus-style)
def fenced_code(text: str) -> str:
    """The text after the first fenced ``python`` opening (or all of it) up to the next fence."""
    start = text.find("```python\n")
    body = text[start + len("```python\n") :] if start >= 0 else text
    end = body.find("```")
    return body if end < 0 else body[:end]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, MemoryError, ValueError):
        return False
    return True


def longest_parsable_span(text: str) -> str:
    """The line span with the most non-blank lines that parses; the earliest such span wins.

    Same answer as trying every (start, end) pair in order, but each start scans ends from the
    last line down and stops at the first that parses, so long answers stay fast.
    """
    lines = text.split("\n")
    prefix = [0]
    for line in lines:
        prefix.append(prefix[-1] + bool(line.strip()))

    def count(i: int, j: int) -> int:
        return prefix[j + 1] - prefix[i]

    best, span = 0, (0, 0)
    for i in range(len(lines)):
        if count(i, len(lines) - 1) <= best:
            break
        top = next(
            (j for j in range(len(lines) - 1, i, -1) if count(i, j) > best and _parses("\n".join(lines[i : j + 1]))),
            None,
        )
        if top is None:
            continue
        low = top
        while low - 1 > i and count(i, low - 1) == count(i, top) and _parses("\n".join(lines[i:low])):
            low -= 1
        best, span = count(i, top), (i, low)
    return "\n".join(lines[span[0] : span[1] + 1])


def _has_return(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Return) for n in ast.walk(node))


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _definition_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.ClassDef):
        return node.name
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name if _has_return(node) else None
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def sanitize(code: str, entry_point: str | None = None) -> str:
    """Keep imports and the definitions ``entry_point`` reaches (functions must return something)."""
    code = longest_parsable_span(code)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return ""
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    definitions: dict[str, ast.stmt] = {}
    for node in tree.body:
        name = _definition_name(node)
        if name is not None and name not in definitions:
            definitions[name] = node
    keep = set(definitions)
    if entry_point is not None:
        keep, frontier = set(), [entry_point]
        while frontier:
            name = frontier.pop()
            if name in keep or name not in definitions:
                continue
            keep.add(name)
            frontier.extend(_names_used(definitions[name]) & set(definitions))
    kept = imports + [node for name, node in definitions.items() if name in keep]
    kept.sort(key=lambda n: n.lineno)
    return "\n".join(ast.unparse(n) for n in kept) + "\n"


def humaneval_solution(doc: dict, completion: str) -> str:
    """The papers' post-processing: fence extraction, prompt prepended, normalised, sanitized."""
    text = doc["prompt"] + "\n" + fenced_code(completion)
    text = text.replace("\t", "    ").replace("\r\n", "\n").strip() + "\n"
    return sanitize(text, doc["entry_point"])


def humaneval_program(doc: dict, completion: str) -> str:
    return f"{humaneval_solution(doc, completion)}\n{doc['test']}\ncheck({doc['entry_point']})\n"


def mbpp_program(doc: dict, completion: str) -> str:
    tests = doc["test"] if "test" in doc and doc.get("test") else "\n".join(doc["test_list"])
    imports = "\n".join(doc.get("test_imports") or [])
    return f"{completion}\n{imports}\n{tests}\n"


# ------------------------------------------------------------------ lm-eval hooks
def _execute(programs: list[str]) -> list[list[dict]]:
    results = run_programs(programs, _EXECUTION["limits"], _EXECUTION["workers"])
    return [[{**asdict(r), "program": p}] for p, r in zip(programs, results, strict=True)]


def execute_humaneval(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    return _execute([humaneval_program(doc, resp[0]) for resp, doc in zip(resps, docs, strict=True)])


def execute_mbpp(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    return _execute([mbpp_program(doc, resp[0]) for resp, doc in zip(resps, docs, strict=True)])


def pass_at_1(doc: dict, results: list) -> dict[str, float]:
    verdict = results[0][0] if isinstance(results[0], list) else results[0]
    return {"pass@1": float(verdict["status"] == "passed")}


def mbpp_test_docs(dataset):
    return dataset.filter(lambda doc: doc["task_id"] in MBPP_TEST_IDS)


def mbpp_shot_docs(dataset):
    rows = dataset.filter(lambda doc: doc["task_id"] in MBPP_SHOT_IDS)
    return rows.map(lambda doc: {"is_fewshot": True})
