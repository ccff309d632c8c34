"""Sparse-dLLM's OpenCompass GSM8K variants: their fixed shots and ``gsm8k_postprocess`` scoring.

Both configs' shots are GSM8K train rows (0-based line numbers below). 17d0dc rewrites each
answer without the ``<<calc>>`` annotations and ends it "The answer is N" plus a newline.
"""

from __future__ import annotations

import re

SHOTS_17D0DC = (7364, 1708, 669, 6724)
SHOTS_1DCE88 = (6374, 3610, 957, 61)
_CALC = re.compile(r"<<[^>]*>>")
_NUMBER = re.compile(r"-?\d+\.\d+|-?\d+")


def _select(dataset, rows: tuple[int, ...]):
    return dataset.select(list(rows))


def oc_1dce88_shots(dataset):
    return _select(dataset, SHOTS_1DCE88)


def oc_17d0dc_shots(dataset):
    return _select(dataset, SHOTS_17D0DC).map(lambda doc: {"shot_answer": oc_17d0dc_answer(doc["answer"])})


def oc_17d0dc_answer(answer: str) -> str:
    """A train answer as 17d0dc's BOT turn: annotations dropped, final line "The answer is N"."""
    body, final = answer.rsplit("\n#### ", 1)
    return f"{_CALC.sub('', body)}\nThe answer is {final.strip()}\n"


def oc_17d0dc_target(doc: dict) -> str:
    return doc.get("shot_answer") or reference_answer(doc["answer"])


def reference_answer(answer: str) -> str:
    """OpenCompass ``gsm8k_dataset_postprocess``: the text after ``#### `` without commas."""
    return answer.split("#### ")[1].replace(",", "")


def gsm8k_postprocess(text: str) -> str:
    """OpenCompass's extraction (0.4.x): the last number before any "Question:", or ``NULL``."""
    numbers = _NUMBER.findall(text.split("Question:")[0])
    return numbers[-1] if numbers else "NULL"


def gsm8k_postprocess_legacy(text: str) -> str:
    """OpenCompass's 2023 extraction: first paragraph, last token with a digit, its digits only.

    ``-10`` becomes ``10`` and ``3.5`` becomes ``35``; reported as ``accuracy_legacy``.
    """
    paragraph = text.split("\n\n")[0]
    for token in reversed(paragraph.split(" ")):
        if any(ch.isdigit() for ch in token):
            return "".join(ch for ch in token if ch.isdigit())
    return ""


def oc_equal(prediction: str, reference: str) -> bool:
    """``Gsm8kEvaluator.is_equal``: the same string, or numerically within 1e-6 of the integer reference."""
    if prediction == reference:
        return True
    try:
        return abs(float(prediction) - int(reference)) < 1e-6
    except ValueError:
        return False


def oc_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    reference = reference_answer(doc["answer"])
    return {
        "accuracy": float(oc_equal(gsm8k_postprocess(results[0]), reference)),
        "accuracy_legacy": float(gsm8k_postprocess_legacy(results[0]) == reference),
    }
