"""``DiffusionLM``: any model x method behind lm-eval's ``LM`` interface, timed by one meter.

Registered with lm-eval as ``dllm_accel`` (``python -m dllm_accel.lm_eval --model dllm_accel
--model_args pretrained=...,method=...``; ``eval/harness.py`` turns model_args into this class).
Each generation request is rendered with the paper's prompt convention, generated in
left-padded batches, cut as the paper cut its answers, and appended to the results store as
soon as its batch finishes. ``loglikelihood`` (multiple-choice tasks) is LLaDA's Monte Carlo
masked-token ELBO (``eval/likelihood.py``); the method does not enter it, since methods
accelerate the denoising loop and the estimate is single forward passes of the model. A
request whose exact rendered prompt is already in the store is answered from it, which is how
an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from lm_eval.api.model import LM
from tqdm import tqdm

from .. import lm_eval as _registers_the_lm_eval_model  # noqa: F401
from ..api import generate
from ..generation.settings import SamplerSettings
from ..measure import Meter, token_counts
from ..methods import build_method
from ..results import RunStore, prompt_hash, sample_key
from .likelihood import LikelihoodSettings, elbo_loglikelihood, encode_pair, greedy_reproduces
from .prompting import DecodeFormat, PromptFormat, encode, finish, render_prompt

# lm-eval's length for a generation request that names none (its HF model's default)
DEFAULT_MAX_GEN_TOKS = 256


def batch_seed(seed: int, task: str, doc_id: int) -> int:
    """A generate call's seed from (run seed, the group's first document): groups are fixed, so a
    resumed run, or a replay of the call, draws what the uninterrupted run drew."""
    digest = hashlib.sha256(f"{seed}:{task}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in one ``[rows, longest]`` batch, and its attention mask."""
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    return input_ids, mask


class GenerationTimeout(Exception):
    """A generate call ran past ``measure.generation_timeout_s``."""


@contextmanager
def _deadline(seconds: float | None):
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expire(signum, frame):
        raise GenerationTimeout(f"generation exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class _Pending:
    """A request still to generate, with its rendered prompt and store key."""

    index: int
    request: Any
    text: str
    hashed: str
    key: str
    until: list[str]
    gen_length: int | None = None


def _is_oom(err: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or a CPU allocator failure (``can't allocate memory``)."""
    text = str(err).lower()
    return (
        isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text
    )


class DiffusionLM(LM):
    def __init__(
        self,
        model,
        tokenizer,
        method: str,
        options: dict[str, Any] | None = None,
        sampler: dict[str, Any] | None = None,
        prompt: PromptFormat | None = None,
        decode: DecodeFormat | None = None,
        batch_size: int = 1,
        store: RunStore | None = None,
        meter: Meter | None = None,
        seed: int = 1234,
        generation_timeout_s: float | None = None,
        progress: bool = True,
        likelihood: LikelihoodSettings | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.method, self.options = method, dict(options or {})
        build_method(method, **self.options)  # reject unknown names and options before any request
        self.settings = SamplerSettings(**(sampler or {}))
        self.likelihood = likelihood or LikelihoodSettings()
        self.prompt, self.decode = prompt or PromptFormat(), decode or DecodeFormat()
        self.batch_size, self.store, self.seed = batch_size, store, seed
        self.meter = meter or Meter(model.device)
        self.timeout_s = generation_timeout_s
        self.progress = progress
        self.process_id = f"{os.getpid()}-{time.time_ns()}"
        self._device = model.device
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._rank, self._world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            self._rank, self._world_size = 0, 1

    # ------------------------------------------------------------------ lm-eval plumbing
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> DiffusionLM:
        """``--model_args pretrained=...,method=...``: see ``eval/harness.py``."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> DiffusionLM:
        from .harness import from_model_args

        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return from_model_args(cls, **(dict(arg_dict) | extra))

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor.unsqueeze(0)
        out = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        torch.distributed.all_gather(out, tensor)
        return torch.stack(out)

    def gather_object(self, obj, dst: int = 0):
        if self._world_size == 1:
            return [obj]
        gathered = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self._world_size > 1:
            torch.distributed.barrier()

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log-likelihood estimate, greedy-reproduces flag) per (context, continuation) request."""
        answers: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm or not self.progress)
        for request in requests:
            context, continuation = request.args
            text = render_prompt(context, self.tokenizer, self.prompt, request.doc.get("task_id"))
            hashed = prompt_hash(f"{text}\x00{continuation}")
            key = sample_key(request.task_name, request.doc_id, request.idx)
            done = self.store.finished(key, hashed) if self.store is not None else None
            if done is None:
                done = self._score_continuation(request, text, continuation, key, hashed)
            answers.append((done["loglikelihood"], done["is_greedy"]))
            bar.update(1)
        bar.close()
        return answers

    def _score_continuation(self, request, text: str, continuation: str, key: str, hashed: str) -> dict:
        prefix, target = encode_pair(self.tokenizer, text, continuation)
        if not target:
            raise ValueError(f"{request.task_name} doc {request.doc_id}: the continuation {continuation!r} has no tokens")
        if len(prefix) + len(target) > self.model.spec.max_seq_len:
            raise ValueError(
                f"{request.task_name} doc {request.doc_id}: {len(prefix)} context + {len(target)} continuation "
                f"tokens exceed the model's context of {self.model.spec.max_seq_len}"
            )
        torch.manual_seed(batch_seed(self.seed, request.task_name, request.doc_id) + request.idx)
        cfg = self.settings.cfg_scale or 0.0
        with self.meter.time() as timing:
            value = elbo_loglikelihood(self.model, prefix, target, self.likelihood, cfg)
            greedy = self.likelihood.is_check_greedy and greedy_reproduces(self.model, prefix, target, cfg)
        record = {
            "key": key,
            "task": request.task_name,
            "doc_id": request.doc_id,
            "repeat": request.idx,
            "kind": "loglikelihood",
            "status": "ok",
            "prompt_hash": hashed,
            "prompt_text": text,
            "continuation": continuation,
            "completion": "",
            "loglikelihood": value,
            "is_greedy": bool(greedy),
            "prompt_tokens": len(prefix),
            "continuation_tokens": len(target),
            "timing": asdict(timing),
            "process": self.process_id,
        }
        if self.store is not None:
            self.store.append(record)
        return record

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError(
            "loglikelihood_rolling (perplexity tasks) is not supported: a masked diffusion LM has no "
            "left-to-right factorisation (LLaDA's official wrapper does not support it either)"
        )

    def get_model_info(self) -> dict:
        return {
            "method": self.method,
            "method_options": self.options,
            "sampler": {k: v for k, v in asdict(self.settings).items() if v is not None},
            "likelihood": asdict(self.likelihood),
            "batch_size": self.batch_size,
            "prompt": asdict(self.prompt),
            "decode": asdict(self.decode),
        }

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answers in request order. Batches are fixed groups of the whole request list, so a
        resumed run regenerates a group exactly as an uninterrupted one did (same members, same
        padding, same seed) and stores only the samples it lacks."""
        answers: list[str | None] = [None] * len(requests)
        items, stored = [], set()
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            text = render_prompt(context, self.tokenizer, self.prompt, request.doc.get("task_id"))
            key = sample_key(request.task_name, request.doc_id, request.idx)
            hashed = prompt_hash(text)
            done = self.store.finished(key, hashed) if self.store is not None else None
            if done is not None:
                answers[i] = done["completion"]
                stored.add(key)
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            items.append(_Pending(i, request, text, hashed, key, until, self._gen_length(gen_kwargs)))
        groups = [g for g in self._batches(items) if any(item.key not in stored for item in g)]
        label = requests[0].task_name if requests else ""
        total = sum(len(g) for g in groups)
        bar = tqdm(total=total, desc=f"{label} {self.method}", disable=disable_tqdm or not self.progress)
        tokens, seconds = 0, 0.0
        for batch in groups:
            for item, record in zip(batch, self._generate_batch(batch, stored), strict=True):
                if item.key not in stored:
                    answers[item.index] = record["completion"]
                if record["status"] == "ok":
                    tokens += record["tokens"]["all_positions"]
            seconds = self.meter.generate_s
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / seconds:.1f}" if seconds else "-")
        bar.close()
        return [a if a is not None else "" for a in answers]

    def _gen_length(self, gen_kwargs: dict) -> int | None:
        """The request's ``max_gen_toks`` when the sampler settings name no length (lm-eval's habit)."""
        if self.settings.gen_length or self.settings.max_new_tokens:
            return None
        return int(gen_kwargs.get("max_gen_toks") or DEFAULT_MAX_GEN_TOKS)

    def _batches(self, pending: list[_Pending]):
        """Consecutive requests, ``batch_size`` at a time, never mixing generation lengths."""
        batch: list[_Pending] = []
        for item in pending:
            if batch and (len(batch) == self.batch_size or item.gen_length != batch[0].gen_length):
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    def _settings_for(self, batch: list[_Pending]) -> SamplerSettings:
        length = batch[0].gen_length
        return self.settings if length is None else replace(self.settings, gen_length=length)

    def _generate_batch(self, batch: list[_Pending], stored: set[str] = frozenset()) -> list[dict]:
        settings = self._settings_for(batch)
        gen_length = settings.gen_length or settings.max_new_tokens
        records: list[dict | None] = [None] * len(batch)
        runnable = []
        for j, item in enumerate(batch):
            ids = encode(self.tokenizer, item.text)
            problem = self._check_prompt(ids, gen_length)
            if problem is not None:
                records[j] = self._record(item, "error", error=problem, prompt_tokens=len(ids))
            else:
                runnable.append((j, ids))
        if runnable:
            self._run(batch, runnable, records, settings)
        if self.store is not None:  # one write: a kill keeps the whole group or cuts its last line
            self.store.append_many([r for r in records if r["key"] not in stored])
        return records

    def _check_prompt(self, ids: list[int], gen_length: int | None) -> str | None:
        spec = self.model.spec
        if gen_length is not None and len(ids) + gen_length > spec.max_seq_len:
            return (
                f"prompt_too_long: {len(ids)} prompt + {gen_length} generated tokens exceed the model's context "
                f"of {spec.max_seq_len}"
            )
        bad = [t for t in ids if t >= spec.vocab_size or t < 0]
        if bad:
            return f"token id {bad[0]} is outside the model's vocabulary of {spec.vocab_size} (tokenizer and model disagree)"
        return None

    def _run(
        self, batch: list[_Pending], runnable: list[tuple[int, list[int]]], records: list, settings: SamplerSettings
    ) -> None:
        spec = self.model.spec
        input_ids, mask = left_padded([ids for _, ids in runnable], spec.tokens.pad)
        width = input_ids.shape[1]
        first = batch[runnable[0][0]].request
        torch.manual_seed(batch_seed(self.seed, first.task_name, first.doc_id))
        strategy = build_method(self.method, **self.options)
        status, error, output = "ok", None, None
        with self.meter.time() as timing:
            try:
                with _deadline(self.timeout_s):
                    output = generate(
                        self.model,
                        input_ids.to(self.model.device),
                        mask.to(self.model.device) if len(runnable) > 1 else None,
                        method=strategy,
                        **{k: v for k, v in asdict(settings).items() if v is not None},
                    )
            except GenerationTimeout as err:
                status, error = "timeout", str(err)
            except (RuntimeError, MemoryError, torch.cuda.OutOfMemoryError) as err:
                if not _is_oom(err):
                    raise
                status, error = "oom", (str(err).splitlines() or [type(err).__name__])[0]
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        mask_id = spec.tokens.mask if self.settings.mask_id is None else self.settings.mask_id
        for row, (j, ids) in enumerate(runnable):
            item = batch[j]
            if output is None:
                records[j] = self._record(item, status, error=error, prompt_tokens=len(ids))
                continue
            generated = output.sequences[row, width:].tolist()
            answer, answer_ids = finish(
                generated, self.tokenizer, self.decode, item.until, spec.tokens.eos, spec.tokens.eot
            )
            records[j] = self._record(
                item,
                "ok",
                prompt_tokens=len(ids),
                completion=answer,
                generated_ids=generated,
                tokens=token_counts(generated, answer_ids, spec.tokens.eos, spec.tokens.eot, mask_id),
                nfe=output.nfe,
                timing=asdict(timing) | {"batch_size": len(runnable)},
                method_stats=output.stats,
            )

    def _record(self, item: _Pending, status: str, **fields: Any) -> dict:
        base = {
            "key": item.key,
            "task": item.request.task_name,
            "doc_id": item.request.doc_id,
            "repeat": item.request.idx,
            "status": status,
            "prompt_hash": item.hashed,
            "prompt_text": item.text,
            "completion": "",
            "process": self.process_id,
        }
        return base | fields
