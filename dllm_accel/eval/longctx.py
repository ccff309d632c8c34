"""Synthetic long-context tasks with exact answers (passkey, RULER-style NIAH, variable tracking).

A sample is a pure function of (task, target length, depth, index, seed, tokenizer, prompt
format): the haystack grows by bisection until the rendered prompt (chat template included)
plus the generation budget fills the target length in the model's own tokens, and needles
sit at unit boundaries at ``depth`` of the haystack. Keys are adjective-noun pairs from the
small word lists below (RULER draws them from ``wonderwords``, which is not a dependency).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_text
from ..synthetic_tasks import NOISE
from .data import read_jsonl

GENERATOR_VERSION = 1
TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking")
HAYSTACKS = ("noise", "gsm8k", "essay")
_ADJECTIVES = (
    "amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly", "keen", "lively",
    "mellow", "noble", "odd", "proud", "quiet", "rapid", "silent", "tidy", "upper", "vivid", "witty", "young",
)  # fmt: skip
_NOUNS = (
    "anchor", "badge", "candle", "desert", "engine", "falcon", "garden", "harbor", "island", "jacket", "kettle",
    "lantern", "meadow", "needle", "orchard", "pillow", "quarry", "river", "saddle", "tunnel", "valley", "window",
)  # fmt: skip


def haystack_units(kind: str, data_dir: Path) -> list[str]:
    """Sentence-like units the haystack is built from, in a fixed order."""
    if kind == "noise":
        return [NOISE] * 50000
    if kind == "gsm8k":
        return [row["question"] for row in read_jsonl(data_dir / "gsm8k" / "train.jsonl.gz")]
    if kind == "essay":
        words = " ".join(
            row["text"] for row in read_jsonl(data_dir / "long_context" / "paul_graham_essays.jsonl.gz")
        ).split()
        return [" ".join(words[i : i + 20]) for i in range(0, len(words), 20)]
    raise ValueError(f"unknown haystack {kind!r} (accepted: {', '.join(HAYSTACKS)})")


def _key(rng: random.Random) -> str:
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _variable(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))


def _task_parts(task: str, rng: random.Random) -> dict:
    """Needles, framing text and answers of one sample (everything but the haystack)."""
    if task == "passkey":
        key = str(rng.randint(10000, 99999))
        return {
            "prefix": "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about the important information there.",
            "needles": [f"The pass key is {key}. Remember it. {key} is the pass key."],
            "question": "What is the pass key? The pass key is",
            "answers": [key],
        }
    if task == "variable_tracking":
        names = [_variable(rng) for _ in range(5)]
        value = str(rng.randint(10000, 99999))
        needles = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
        return {
            "prefix": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n",
            "needles": needles,
            "question": f"Question: Find all variables that are assigned the value {value} in the text above. "
            f"Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned "
            f"the value {value}, they are:",
            "answers": names,
        }
    keys = [_key(rng) for _ in range(4)]
    while len(set(keys)) < 4:
        keys = [_key(rng) for _ in range(4)]
    values = [_number(rng) for _ in range(4)]
    if task == "niah_single":
        needles, asked, answers = [(keys[0], values[0])], [keys[0]], [values[0]]
    elif task == "niah_multikey":
        needles, asked, answers = list(zip(keys, values, strict=True)), [keys[0]], [values[0]]
    elif task == "niah_multivalue":
        needles, asked, answers = [(keys[0], v) for v in values], [keys[0]], values
    elif task == "niah_multiquery":
        needles, asked, answers = list(zip(keys, values, strict=True)), keys, values
    else:
        raise ValueError(f"unknown long-context task {task!r} (accepted: {', '.join(TASKS)})")
    query = ", ".join(asked)
    return {
        "prefix": "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the numbers afterwards.",
        "needles": [f"One of the special magic numbers for {k} is: {v}." for k, v in needles],
        "question": f"What are all the special magic numbers for {query} mentioned in the provided text? "
        f"The special magic numbers for {query} mentioned in the provided text are",
        "answers": answers,
    }


def _compose(parts: dict, units: list[str], depth: float, rng: random.Random) -> str:
    """Needles at unit boundaries: one at ``depth``, several at random spots kept in order."""
    needles = parts["needles"]
    if len(needles) == 1:
        spots = [round(depth * len(units))]
    else:
        spots = sorted(rng.randint(0, len(units)) for _ in needles)
    body = list(units)
    for offset, (spot, needle) in enumerate(zip(spots, needles, strict=True)):
        body.insert(spot + offset, needle)
    return parts["prefix"] + "\n" + " ".join(body) + "\n" + parts["question"]


def build_sample(
    task: str,
    target_len: int,
    depth: float,
    index: int,
    seed: int,
    units: list[str],
    count_tokens: Callable[[str], int],
    gen_length: int,
) -> dict:
    """One sample whose rendered prompt has at most ``target_len - gen_length`` tokens."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth} must be in [0, 1]")
    rng = random.Random(f"{seed}:{task}:{target_len}:{depth}:{index}")
    parts = _task_parts(task, rng)
    budget = target_len - gen_length
    layout_seed = rng.random()

    def text_with(n: int) -> str:
        return _compose(parts, units[:n], depth, random.Random(layout_seed))

    if count_tokens(text_with(0)) > budget:
        raise ValueError(
            f"{task}: target length {target_len} leaves no room for a haystack after {gen_length} generated tokens"
        )
    low, high = 0, 1
    while high < len(units) and count_tokens(text_with(high)) <= budget:
        low, high = high, min(2 * high, len(units))
    if count_tokens(text_with(high)) <= budget:
        low = high
    while low < high:
        mid = (low + high + 1) // 2
        if count_tokens(text_with(mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    text = text_with(low)
    return {
        "id": f"{task}-{target_len}-{depth}-{index}",
        "input": text,
        "answers": parts["answers"],
        "task": task,
        "target_len": target_len,
        "depth": depth,
        "prompt_tokens": count_tokens(text),
        "metric": "exact" if task == "passkey" else "string_match_all",
        "generator_version": GENERATOR_VERSION,
        "uid": str(uuid.UUID(int=rng.getrandbits(128))),
    }


def build_samples(task: str, lengths, depths, per_cell: int, seed: int, **kwargs) -> list[dict]:
    """Samples ordered so that any prefix (``limit``) covers the depth grid evenly."""
    samples = []
    for length in lengths:
        for index in range(per_cell):
            for depth in depths:
                samples.append(build_sample(task, int(length), float(depth), index, seed, **kwargs))
    return samples


def write_samples(path: Path, samples: list[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in samples))


# ------------------------------------------------------------------ scoring (lm-eval hooks)
def passkey_correct(answer: str, completion: str) -> bool:
    import re

    match = re.search(r"\d+", completion)
    return bool(match) and match.group(0) == answer


def string_match_all(answers: list[str], completion: str) -> float:
    return sum(a.lower() in completion.lower() for a in answers) / len(answers)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    completion = results[0]
    if doc["metric"] == "exact":
        return {"score": float(passkey_correct(doc["answers"][0], completion))}
    return {"score": string_match_all(doc["answers"], completion)}
