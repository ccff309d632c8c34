"""Synthetic, exactly scored tasks that stress what acceleration methods change.

Below both ``train/`` (which trains the tiny model on them) and ``eval/`` (which scores it on
their held-out split), so neither imports the other.

- ``passkey``: a one-symbol key (30 possible) hidden at a chosen depth in RULER's noise
  haystack, stated twice as RULER's needle does; evicted or stale prompt entries lose it.
  The key is one symbol that occurs nowhere else in the prompt, so the answer finds it by
  content alone. RULER's five-digit key (and five position-specific letters) stayed at chance
  after 500 steps alone on this model, the one-symbol key reached a fifth: retrieval is the
  slowest skill here, and a longer key multiplies the steps it needs.
- ``arithmetic``: three chained single-digit additions/subtractions in GSM8K's
  "Answer: ... #### N" format; the question is the answer's layout with every result blank
  ("Question: 9 - 5 = ?. ? + 5 = ?. ? - 8 = ?."), and each result needs the one before it
  (decoding order and parallel commits matter). Worded questions ("A box has 4 pears. Then it
  sells 3. ...") were at 10-40% after 2,850 steps.
- ``copy``: reproduce a 31-letter random span; the answer spans four blocks.

Copy and arithmetic have a fixed layout (fixed span length, single-digit numbers) and their
answers fill the generation window but for one EOS: within a CPU budget a model this small
learns position-aligned copying only when the alignment does not vary (a 31-letter copy: ~100
steps; 16-40 letters: still at chance after 225), and long EOS tails slow that learning
severalfold. Reversal was tried and dropped (alone, at chance after 300 steps). The passkey
needle's offset varies with depth and length, so it can only be found by content.

A sample is a pure function of its arguments (``random.Random`` seeded with a string, as
specs/evaluation-settings-and-long-context.md 6.1 asks). A stable hash puts one sample in
eight in the held-out split: training never sees those, evaluation sees nothing else.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

GENERATOR_VERSION = 1
HELD_OUT_ONE_IN = 8

# RULER's noise filler, also the long-context tasks' (eval/longctx.py) "noise" haystack
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# -- passkey: RULER's needle and question in its noise haystack, a one-symbol key
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
PASSKEY_MIN_LENGTH = 128
PASSKEY_QUESTION = "What is the pass key? The pass key is"
KEY_SYMBOLS = "ABCDEGJKLMNOPQSUVXYZ0123456789"  # none of them occurs in the noise or the question
_NOISE_SENTENCES = [sentence + "." for sentence in NOISE.rstrip(".").split(". ")]

# -- arithmetic ------------------------------------------------------------------------------------
ARITHMETIC_MAX = 9  # every number, given or computed, is one digit
ARITHMETIC_STEPS = 3

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPAN_LENGTH = 31
_GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")


@dataclass(frozen=True)
class Sample:
    task: str
    prompt: str
    answer: str  # the reference completion, without the trailing EOS
    target: str  # what the scorer compares against
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(f"{self.task}\x00{self.prompt}\x00{self.answer}".encode()).digest()
        return digest[0] % HELD_OUT_ONE_IN == 0


@dataclass(frozen=True)
class DecodeDefaults:
    """Greedy decoding of the accuracy reference: one token per step."""

    gen_length: int
    block_length: int

    @property
    def steps(self) -> int:
        return self.gen_length


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    build: Callable[[random.Random, int, float], Sample]
    score: Callable[[str, Sample], bool]
    decode: DecodeDefaults
    default_length: int  # prompt length in tokens (passkey) or 0 where the task sets its own
    chance: float  # accuracy of a uniform guess over the answer space

    def sample(self, rng: random.Random, length: int | None = None, depth: float | None = None) -> Sample:
        length = self.default_length if length is None else length
        return self.build(rng, length, rng.random() if depth is None else depth)


def _check_length(name: str, length: int, minimum: int) -> None:
    if length < minimum:
        raise ValueError(f"{name}: target length {length} is too short (at least {minimum} tokens)")


def byte_length(text: str) -> int:
    """Token count under the shipped byte-level tokenizer (it adds no special tokens)."""
    return len(text.encode("utf-8"))


def passkey_sample(target_len: int, depth: float, index: int, seed: int | str) -> Sample:
    """Sample ``index`` of length ``target_len`` (prompt + generation window, in byte tokens), needle at ``depth``.

    The haystack is the longest run of noise sentences that fits; the needle sits at the
    sentence boundary nearest ``depth`` of it.
    """
    _check_length("passkey", target_len, PASSKEY_MIN_LENGTH)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey: depth={depth} must be in [0, 1]")
    rng = random.Random(f"{seed}:passkey:{target_len}:{depth}:{index}")
    key = rng.choice(KEY_SYMBOLS)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    budget = target_len - PASSKEY.decode.gen_length - byte_length(f"{needle}\n{PASSKEY_QUESTION}")
    sentences: list[str] = []
    start = rng.randrange(len(_NOISE_SENTENCES))
    while True:
        following = _NOISE_SENTENCES[(start + len(sentences)) % len(_NOISE_SENTENCES)]
        if byte_length(" ".join([*sentences, following])) + 1 > budget:
            break
        sentences.append(following)
    spot = round(depth * len(sentences))
    body = " ".join([*sentences[:spot], needle, *sentences[spot:]])
    prompt = f"{body}\n{PASSKEY_QUESTION}"
    meta = {"target_len": target_len, "depth": depth, "prompt_tokens": byte_length(prompt), "version": GENERATOR_VERSION}
    return Sample("passkey", prompt, f" {key}", key, {**meta, "index": index, "seed": seed})


def build_passkey(rng: random.Random, target_len: int, depth: float) -> Sample:
    return passkey_sample(target_len, depth, rng.getrandbits(32), "train")


def score_passkey(completion: str, sample: Sample) -> bool:
    """Exact: the first word of the completion, without a trailing full stop, is the key."""
    words = completion.split()
    return bool(words) and words[0].rstrip(".") == sample.target


def build_arithmetic(rng: random.Random, _length: int, _depth: float) -> Sample:
    """Three chained single-digit steps; the question is the answer's layout with every result blank."""
    value = rng.randint(1, ARITHMETIC_MAX)
    question, steps = [], []
    for index in range(ARITHMETIC_STEPS):
        gain = value == 0 or (value < ARITHMETIC_MAX and rng.random() < 0.5)
        amount = rng.randint(1, ARITHMETIC_MAX - value) if gain else rng.randint(1, value)
        following = value + amount if gain else value - amount
        sign = "+" if gain else "-"
        question.append(f"{value if index == 0 else '?'} {sign} {amount} = ?.")
        steps.append(f"{value} {sign} {amount} = {following}.")
        value = following
    answer = " ".join(steps) + f"\n#### {value}"
    meta = {"operations": len(steps), "version": GENERATOR_VERSION}
    return Sample("arithmetic", f"Question: {' '.join(question)}\nAnswer: ", answer, str(value), meta)


def score_arithmetic(completion: str, sample: Sample) -> bool:
    """GSM8K strict match: the number after the first ``#### ``."""
    found = _GSM8K_STRICT.search(completion)
    return found is not None and found.group(1).replace(",", "").rstrip(".") == sample.target


def build_copy(rng: random.Random, _length: int, _depth: float) -> Sample:
    span = "".join(rng.choice(LETTERS) for _ in range(SPAN_LENGTH))
    meta = {"span_length": len(span), "version": GENERATOR_VERSION}
    return Sample("copy", f"Copy: {span}\nAnswer: ", span, span, meta)


def score_span(completion: str, sample: Sample) -> bool:
    """Exact: the first whitespace-delimited word of the completion is the expected span."""
    words = completion.split()
    return bool(words) and words[0] == sample.target


PASSKEY = SyntheticTask(
    "passkey", build_passkey, score_passkey, DecodeDefaults(gen_length=3, block_length=3), 512, 1 / len(KEY_SYMBOLS)
)
TASKS: dict[str, SyntheticTask] = {
    "passkey": PASSKEY,
    "arithmetic": SyntheticTask(
        "arithmetic", build_arithmetic, score_arithmetic, DecodeDefaults(gen_length=40, block_length=8), 0, 1 / 10
    ),
    "copy": SyntheticTask(
        "copy", build_copy, score_span, DecodeDefaults(gen_length=32, block_length=8), 0, 26.0**-SPAN_LENGTH
    ),
}


def task_named(name: str) -> SyntheticTask:
    if name not in TASKS:
        raise ValueError(f"unknown synthetic task {name!r} (accepted: {', '.join(TASKS)})")
    return TASKS[name]


def held_out_samples(task: str, n: int, length: int | None = None, seed: int = 1234) -> list[Sample]:
    """The first ``n`` evaluation samples, all from the held-out split.

    Passkey depths cycle through ``PASSKEY_DEPTHS`` so any prefix covers the depth grid; each
    depth takes the runner's indices in order and keeps the held-out ones.
    """
    spec = task_named(task)
    length = spec.default_length if length is None else length
    if task == "passkey":
        return _held_out_passkeys(n, length, seed)
    samples = []
    for index in range(n):
        rng = random.Random(f"{seed}:{task}:{length}:0.0:{index}")
        sample = spec.sample(rng, length, 0.0)
        while not sample.held_out:
            sample = spec.sample(rng, length, 0.0)
        samples.append(sample)
    return samples


def _held_out_passkeys(n: int, length: int, seed: int) -> list[Sample]:
    next_index = dict.fromkeys(PASSKEY_DEPTHS, 0)
    samples = []
    for i in range(n):
        depth = PASSKEY_DEPTHS[i % len(PASSKEY_DEPTHS)]
        while True:
            sample = passkey_sample(length, depth, next_index[depth], seed)
            next_index[depth] += 1
            if sample.held_out:
                samples.append(sample)
                break
    return samples


def training_sample(task: str, rng: random.Random, length: int | None = None) -> Sample:
    """A sample outside the held-out split, at a random depth."""
    spec = task_named(task)
    sample = spec.sample(rng, length)
    while sample.held_out:
        sample = spec.sample(rng, length)
    return sample
