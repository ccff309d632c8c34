"""MATH (lm-eval ``minerva_math``, 4-shot) and MATH-500: answer extraction and scoring.

``exact_match`` follows lm-eval 0.4.8/0.4.9 (what Fast-dLLM and DyLLM ran): the Minerva
normalisation of appendix D of Lewkowycz et al. (2022), then symbolic equality of the two
normalised answers. lm-eval parses them with sympy's LaTeX parser, which needs antlr4 4.11
and so cannot coexist with Hydra; ``latex2sympy2_extended`` (antlr4 4.9) parses them here.
``math_verify`` is HF math-verify of the gold solution against the whole completion, as
lm-eval computes it.
"""

from __future__ import annotations

import re
import signal
import threading
from contextlib import contextmanager

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
INVALID_ANSWER = "[invalidanswer]"
_EQUIV_TIMEOUT_S = 5

# Minerva appendix D: textual substitutions, then expressions removed outright.
_SUBSTITUTIONS = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)
_REMOVED = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
    r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots",
)  # fmt: skip

# The four fixed Minerva exemplars lm-eval's minerva_math uses as shots.
_SHOTS = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and "
        "$5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives $x<5$. "
        "Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
        "Final Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = \\boxed{24}.$\n"
        "Final Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times "
        "must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of weight.  "
        "If he lifts two 15-pound weights instead for $n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds "
        "of weight.  Equating this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n"
        "\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\n"
        "Final Answer: The final answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution $(x, y)$ "
        "where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also know "
        "that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
        "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
)


def minerva_shots() -> list[dict]:
    return [{"problem": p, "solution": s, "few_shot": "1"} for p, s in _SHOTS]


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (balanced braces) or ``\\boxed x`` in ``text``."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def unbox(boxed: str | None) -> str:
    if boxed is None:
        return INVALID_ANSWER
    if boxed.startswith("\\boxed "):
        return boxed[len("\\boxed ") :]
    opening = boxed.index("{")
    return boxed[opening + 1 : -1]


def normalize_final_answer(answer: str) -> str:
    """Minerva's answer normalisation (appendix D), as lm-eval 0.4.8/0.4.9 apply it."""
    answer = answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in _REMOVED:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def unnormalized_answer(completion: str) -> str:
    """The text of "Final Answer: The final answer is X. I hope it is correct." or the invalid marker."""
    match = re.search(
        r"Final Answer: The final answer is(.*?). I hope it is correct.", completion + "I hope it is correct."
    )
    return match.group(1).strip() if match else INVALID_ANSWER


@contextmanager
def _time_limit(seconds: int):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expire(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def is_equiv(a: str, b: str) -> bool:
    """Symbolic equality of two normalised answers; unparsable or slow comparisons are unequal."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    try:
        with _time_limit(_EQUIV_TIMEOUT_S):
            return sympy.simplify(latex2sympy(a) - latex2sympy(b)) == 0
    except Exception:  # parse errors, type errors, timeouts: lm-eval scores all of them 0
        return False


def math_verify(solution: str, completion: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(gold=parse(solution), target=parse(completion)))
    except Exception:  # math-verify raises on pathological input; that sample scores 0
        return False


def process_docs(dataset):
    return dataset.map(lambda doc: {"answer": normalize_final_answer(unbox(last_boxed(doc["solution"])))})


def _subject_docs(subject: str):
    def select(dataset):
        return process_docs(dataset.filter(lambda doc: doc["subject"] == subject))

    return select


algebra_docs = _subject_docs("algebra")
counting_and_probability_docs = _subject_docs("counting_and_probability")
geometry_docs = _subject_docs("geometry")
intermediate_algebra_docs = _subject_docs("intermediate_algebra")
number_theory_docs = _subject_docs("number_theory")
prealgebra_docs = _subject_docs("prealgebra")
precalculus_docs = _subject_docs("precalculus")


def doc_to_text(doc: dict) -> str:
    return "Problem:\n" + doc["problem"] + "\n\nSolution:"


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    completion = results[0]
    answer = normalize_final_answer(unnormalized_answer(completion))
    return {
        "exact_match": int(is_equiv(answer, doc["answer"])),
        "math_verify": int(math_verify(doc["solution"], completion)),
    }
