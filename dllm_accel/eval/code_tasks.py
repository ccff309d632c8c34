"""HumanEval(+) and MBPP(+): answer post-processing and pass@1 through the sandbox.

HumanEval answers are sanitized as Dream, Fast-dLLM and dLLM-Cache do (their
``postprocess_code.py`` + ast ``sanitize``), or kept as lm-eval keeps them; MBPP answers are run as lm-eval runs them
(completion, newline, the asserts). Execution happens in an lm-eval filter so that all of a
task's programs run in parallel; ``process_results`` only reads the verdicts. Each answer is a
*check*: the solution (the code scored) and the tests, which ``sandbox.run_check`` runs in two
separate sandboxes so that the solution cannot forge the tests' verdict.
"""

from __future__ import annotations

import ast
from dataclasses import asdict

from .sandbox import ISOLATION, Limits, default_isolation, run_checks

HUMANEVAL_POSTPROCESS = ("papers", "lm_eval")
CODE_TASKS = ("dllm_humaneval", "dllm_humaneval_plus", "dllm_mbpp", "dllm_mbpp_plus")
_EXECUTION = {"workers": 4, "limits": Limits(), "humaneval_postprocess": "papers", "isolation": None}
MBPP_TEST_IDS = range(11, 511)
MBPP_SHOT_IDS = (2, 3, 4)


def configure_execution(
    workers: int = 4, timeout_s: float = 10.0, humaneval_postprocess: str = "papers", isolation: str | None = None
) -> None:
    """Parallel workers, per-program timeout, HumanEval post-processing and isolation for this process."""
    if humaneval_postprocess not in HUMANEVAL_POSTPROCESS:
        raise ValueError(
            f"unknown humaneval_postprocess {humaneval_postprocess!r} (accepted: {', '.join(HUMANEVAL_POSTPROCESS)})"
        )
    if workers < 1:
        raise ValueError(f"code_workers={workers} must be >= 1")
    if timeout_s <= 0:
        raise ValueError(f"code_timeout_s={timeout_s} must be > 0")
    if isolation is not None and isolation not in ISOLATION:
        raise ValueError(f"code_isolation={isolation!r} is not one of {', '.join(ISOLATION)}")
    _EXECUTION.update(
        workers=workers,
        limits=Limits(timeout_s=timeout_s),
        humaneval_postprocess=humaneval_postprocess,
        isolation=isolation or default_isolation(),
    )


# ------------------------------------------------------------------ sanitize (the papers' ast version)
def fenced_code(text: str) -> str:
    """The text after the first fenced ``python`` opening (or all of it) up to the next fence."""
    return text.split("```python\n", 1)[-1].split("```")[0]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, MemoryError, ValueError):
        return False
    return True


def longest_parsable_span(text: str, max_lines: int = 100) -> str:
    """Among the first ``max_lines`` lines, the span with the most non-blank lines that parses.

    The earliest such span wins, as when every (start, end >= start) pair is tried in order;
    each start scans ends from the last line down and stops at the first that parses, so long
    answers stay fast.
    """
    lines = text.splitlines()[:max_lines]
    prefix = [0]
    for line in lines:
        prefix.append(prefix[-1] + bool(line.strip()))

    def count(i: int, j: int) -> int:
        return prefix[j + 1] - prefix[i]

    best, span = 0, None
    for i in range(len(lines)):
        if count(i, len(lines) - 1) <= best:
            break
        ends = (j for j in range(len(lines) - 1, i - 1, -1) if count(i, j) > best)
        top = next((j for j in ends if _parses("\n".join(lines[i : j + 1]))), None)
        if top is None:
            continue
        low = top
        while low - 1 >= i and count(i, low - 1) == count(i, top) and _parses("\n".join(lines[i:low])):
            low -= 1
        best, span = count(i, top), (i, low)
    return "" if span is None else "\n".join(lines[span[0] : span[1] + 1])


def _references(node: ast.AST) -> set[str]:
    """Names a definition mentions: bare names and attribute names (not what an attribute hangs off)."""
    found, stack = set(), [node]
    while stack:
        for child in ast.iter_child_nodes(stack.pop()):
            if isinstance(child, ast.Name):
                found.add(child.id)
            elif isinstance(child, ast.Attribute):
                found.add(child.attr)
            else:
                stack.append(child)
    return found


def _definition_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.ClassDef):
        return node.name
    if isinstance(node, ast.FunctionDef):
        return node.name if any(isinstance(n, ast.Return) for n in ast.walk(node)) else None
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def sanitize(code: str, entry_point: str | None = None) -> str:
    """Dream/Fast-dLLM/dLLM-Cache ``sanitize``: imports, then the definitions ``entry_point`` reaches.

    Functions count only if they return something; a later definition of a name replaces an
    earlier one in its place. A helper the tests call but the entry point does not (HumanEval/50's
    ``encode_shift``) is dropped, exactly as the papers' scorer drops it.
    """
    code = longest_parsable_span(code.replace("\t", "    ").replace("\r\n", "\n").replace("\r", "\n").strip() + "\n")
    tree = ast.parse(code)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    definitions: dict[str, ast.stmt] = {}
    for node in tree.body:
        name = _definition_name(node)
        if name is not None:
            definitions[name] = node
    keep = set(definitions)
    if entry_point:
        keep, frontier = set(), [entry_point]
        while frontier:
            name = frontier.pop(0)
            if name not in keep:
                keep.add(name)
                frontier.extend(_references(definitions[name]) - keep if name in definitions else ())
    return "\n".join([ast.unparse(n) for n in imports] + [ast.unparse(n) for k, n in definitions.items() if k in keep])


def humaneval_solution(doc: dict, completion: str) -> str:
    """The code scored for a completion, under the configured post-processing.

    ``papers``: fenced code, the prompt and a newline before it, then ``sanitize`` (Dream,
    Fast-dLLM, dLLM-Cache). ``lm_eval``: the prompt followed by the completion, unchanged
    (lm-eval's ``humaneval``).
    """
    if _EXECUTION["humaneval_postprocess"] == "lm_eval":
        return doc["prompt"] + completion
    return sanitize(doc["prompt"] + "\n" + fenced_code(completion), doc["entry_point"])


def humaneval_check(doc: dict, completion: str) -> tuple[str, str]:
    """(solution, tests): the official program is the solution, the test code and ``check(entry_point)``."""
    return humaneval_solution(doc, completion) + "\n", f"{doc['test']}\ncheck({doc['entry_point']})\n"


def mbpp_check(doc: dict, completion: str) -> tuple[str, str]:
    """(solution, tests) of lm-eval's MBPP program: the completion, the test imports, the asserts.

    The imports run on both sides: the completion may use a module only the tests import.
    """
    tests = doc["test"] if "test" in doc and doc.get("test") else "\n".join(doc["test_list"])
    imports = "\n".join(doc.get("test_imports") or [])
    return f"{completion}\n{imports}\n", f"{imports}\n{tests}\n"


# ------------------------------------------------------------------ lm-eval hooks
def _execute(checks: list[tuple[str, str]]) -> list[list[dict]]:
    results = run_checks(checks, _EXECUTION["limits"], _EXECUTION["workers"], _EXECUTION["isolation"])
    return [[{**asdict(r), "program": s + t}] for (s, t), r in zip(checks, results, strict=True)]


def execute_humaneval(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    return _execute([humaneval_check(doc, resp[0]) for resp, doc in zip(resps, docs, strict=True)])


def execute_mbpp(resps: list[list[str]], docs: list[dict]) -> list[list[dict]]:
    return _execute([mbpp_check(doc, resp[0]) for resp, doc in zip(resps, docs, strict=True)])


def pass_at_1(doc: dict, results: list) -> dict[str, float]:
    verdict = results[0][0] if isinstance(results[0], list) else results[0]
    return {"pass@1": float(verdict["status"] == "passed")}


def mbpp_test_docs(dataset):
    return dataset.filter(lambda doc: doc["task_id"] in MBPP_TEST_IDS)


def mbpp_shot_docs(dataset):
    rows = dataset.filter(lambda doc: doc["task_id"] in MBPP_SHOT_IDS)
    return rows.map(lambda doc: {"is_fewshot": True})
