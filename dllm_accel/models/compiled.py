"""The ``compile`` setting: passes and fused primitives through ``torch.compile``.

Two levels, both keeping eager's roundings (``emulate_precision_casts``: every cast that
eager rounds at is rounded at in the fused kernels too, so bf16 outputs stay identical):

- whole passes (the dense pass, Fast-dLLM's cache pass, Sparse-dLLM's block pass) are
  compiled as one graph each through ``compiled_pass``: the layer loop becomes a handful
  of kernels per layer instead of ~40 launches;
- the small primitives every method composes (RMSNorm, RoPE, the SwiGLU gate) are marked
  ``@fusable``: inside a compiled pass they are traced like any code, and in a method whose
  pass is not compiled as a whole (data-dependent rows) each runs as one fused kernel.

Elementwise code fuses bit-identically (no contraction to FMA), but a fused sum adds in
another order than aten's and differs by an ulp, enough to flip dLLM-Cache's near-tied
value-similarity picks. So the reductions on the decision path (RMSNorm's mean square, the
cosine similarity) are ``mean_square`` and ``cosine_similarity`` below: under compilation
they are opaque operators that run aten's own kernel, so compiled and eager passes are
bit-identical (``tests/test_compile.py`` checks it); everything around them still fuses.

Compilation is switched on per generation by ``compiling(True)`` (the loop, decorated with
``honours_compile_setting``, does it when ``settings.compile``). Shapes that change between prompts are compiled dynamically after
their first change, so a pass compiles at most a few times (``tests/test_compile.py`` states
the bound). On CUDA, fixed-shape passes also run as CUDA graphs (``mode='reduce-overhead'``);
their in-place cache buffers must be static addresses (``static_buffers``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

_state = {"enabled": False}
_compiled: dict[tuple[Callable, bool], Callable] = {}


def _configure() -> None:
    """Inductor settings that keep eager's numerics."""
    import torch._inductor.config as inductor

    inductor.emulate_precision_casts = True  # round where eager rounds (bf16 intermediates)
    inductor.fallback_random = True  # never replace torch's RNG stream
    # one process may run many settings (dLLM-Cache: a graph per refresh branch, with and without
    # transfer, batch 1 and more, per family); past the limit dynamo would silently run eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def enabled() -> bool:
    return _state["enabled"]


@contextmanager
def compiling(on: bool) -> Iterator[None]:
    """Run the enclosed code with compiled passes when ``on`` (or when an enclosing scope is)."""
    previous = _state["enabled"]
    _state["enabled"] = previous or on
    if _state["enabled"]:
        _configure()
    try:
        yield
    finally:
        _state["enabled"] = previous


def honours_compile_setting(loop: F) -> F:
    """Decorate a generation loop: its passes are compiled while its ``settings.compile`` is set."""
    signature = inspect.signature(loop)

    @functools.wraps(loop)
    def run(*args: Any, **kwargs: Any) -> Any:
        settings = signature.bind(*args, **kwargs).arguments["settings"]
        with compiling(settings.compile):
            return loop(*args, **kwargs)

    return run  # type: ignore[return-value]


def _compile(fn: Callable, graphs: bool) -> Callable:
    key = (fn, graphs)
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, dynamic=True, mode="reduce-overhead" if graphs else None)
    return _compiled[key]


def compiled_pass(fn: F, *, graphs: bool = False) -> F:
    """``fn`` itself when compilation is off, else its compiled form.

    ``graphs=True`` marks a pass whose shapes never change within a generation; on CUDA it
    is captured as a CUDA graph. ``fn`` must be a plain function (not a bound method) so
    every generation shares its compiled code.
    """
    if not _state["enabled"] or torch.compiler.is_compiling():
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
        return _compile(fn, graphs and cuda)(*args, **kwargs)

    return run  # type: ignore[return-value]


def fusable(fn: F) -> F:
    """A small elementwise/reduction primitive: one fused kernel when compilation is on."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not _state["enabled"] or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return _compile(fn, False)(*args, **kwargs)

    return run  # type: ignore[return-value]


def static_buffers(*tensors: torch.Tensor) -> None:
    """Mark cache buffers written in place by a CUDA-graph pass as fixed addresses."""
    if _state["enabled"]:
        for t in tensors:
            if t.is_cuda:
                torch._dynamo.mark_static_address(t)


# -- reductions in eager's order -------------------------------------------------------
@torch.library.custom_op("dllm_accel::mean_square", mutates_args=())
def _aten_mean_square(h: torch.Tensor) -> torch.Tensor:
    return h.pow(2).mean(-1, keepdim=True)


@_aten_mean_square.register_fake
def _(h: torch.Tensor) -> torch.Tensor:
    return h.new_empty((*h.shape[:-1], 1))


@torch.library.custom_op("dllm_accel::cosine_similarity", mutates_args=())
def _aten_cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@_aten_cosine_similarity.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape)[:-1])


def mean_square(h: torch.Tensor) -> torch.Tensor:
    """``h.pow(2).mean(-1, keepdim=True)``, summed in aten's order also inside compiled code."""
    if torch.compiler.is_compiling():
        return _aten_mean_square(h)
    return h.pow(2).mean(-1, keepdim=True)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last dimension, in aten's order also inside compiled code."""
    if torch.compiler.is_compiling():
        return _aten_cosine_similarity(a, b)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)
