"""Count host-device syncs and kernel launches of a generation, per denoising step and per layer.

A ``TorchDispatchMode`` sees every aten op a call dispatches, on any device, so a CPU run
counts the syncs a CUDA run would make. An op counts as a **sync** when, on CUDA, the host
waits for the device before it can continue:

- reading a value: ``_local_scalar_dense`` (``.item()``, ``int()``/``float()``/``bool()`` of a
  tensor, ``if tensor``), ``is_nonzero``, ``equal``, ``allclose``;
- an output shape that depends on data: ``nonzero`` (``torch.where(cond)``, ``argwhere``),
  ``masked_select``, boolean-mask indexing and assignment (``index``/``index_put_`` with a bool
  index: they run ``nonzero``), ``repeat_interleave`` with tensor repeats and no ``output_size``,
  ``unique`` and its variants, ``bincount``, ``histc`` (its range);
- a blocking copy: to the CPU (``_to_copy``/``copy_`` from a device tensor), ``Tensor.tolist()``
  and ``.numpy()`` (counted at the Python level, because on CPU they dispatch nothing), and
  ``torch.tensor(...)`` built from host data (a pageable, blocking host-to-device copy).

Not syncs: ``nonzero_static``, ``topk``, ``sort``, ``multinomial``, ``masked_fill``,
``torch.where(c, a, b)``, factory functions (``full``, ``arange``, ``linspace``), Python scalars.

An op is a **launch** unless it only makes a view or reads metadata (its schema returns an
alias that is not written, e.g. ``view``, ``slice``, ``transpose``, ``expand``), allocates
without writing (``empty*``), or is one of the syncs above (counted there).

Ops are attributed to steps by the loop's profiler ranges: a step runs from the start of one
loop iteration (``loop.STEP``) to the start of the next, so it holds the forward, the policy
and the block-end check that follows; what runs before the first step and once after the
last (``loop.FINISH``) is counted apart. Within a step, forward pre-hooks on the model's
modules attribute ops to layers: a submodule of ``blocks[i]`` enters layer ``i``; the
embedding, the final norm and the head are outside the layer loop.
"""

from __future__ import annotations

import re
import traceback
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .generation.loop import FINISH, STEP
from .models.core import DiffusionTransformer

_aten = torch.ops.aten
# ops that always make the host wait for the device
ALWAYS_SYNC = frozenset(
    {
        _aten._local_scalar_dense.default,
        _aten.is_nonzero.default,
        _aten.equal.default,
        _aten.allclose.default,
        _aten.nonzero.default,
        _aten.nonzero.out,
        _aten.masked_select.default,
        _aten.unique_dim.default,
        _aten._unique.default,
        _aten._unique2.default,
        _aten.unique_consecutive.default,
        _aten.unique_dim_consecutive.default,
        _aten.bincount.default,
        _aten.histc.default,
    }
)
_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index", "_unsafe_index_put"})
_ALLOCATIONS = frozenset({"empty", "empty_like", "empty_strided", "empty_permuted", "lift_fresh", "detach"})

OUTSIDE = "outside"  # not inside a layer: embedding, head, policy, loop
HEAD = "head"


def _is_view(func) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else None
    if not isinstance(indices, (list, tuple)):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def is_sync(func, args, kwargs) -> bool:
    """True when ``func`` applied to ``args`` makes the host wait for a CUDA device."""
    if func in ALWAYS_SYNC:
        return True
    name = func._schema.name.split("::")[-1]
    if name in _INDEXING:
        return _bool_index(args)
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats", args[0])
        return isinstance(repeats, torch.Tensor) and repeats.dim() > 0 and kwargs.get("output_size") is None
    if name in ("_to_copy", "copy_", "copy"):
        return _device_to_host(func, args, kwargs)
    return False


def _device_to_host(func, args, kwargs) -> bool:
    source = args[1] if func._schema.name.endswith("copy_") else args[0]
    if func._schema.name.endswith("copy_"):
        target = args[0].device
    else:
        target = kwargs.get("device") or source.device
    return source.device.type != "cpu" and torch.device(target).type == "cpu"


@dataclass
class Region:
    """The ops of one step window (or of everything outside the steps)."""

    syncs: int = 0
    launches: int = 0
    layer_syncs: Counter = field(default_factory=Counter)  # layer -> syncs inside it
    layer_launches: Counter = field(default_factory=Counter)


@dataclass
class OpCounts:
    """What a counted run dispatched: ``setup`` before the first step, ``steps`` windows, ``finish`` after the last."""

    setup: Region
    steps: list[Region]
    finish: Region
    n_layers: int
    sites: Counter  # (where, op) -> syncs, for finding them

    @property
    def max_syncs_per_step(self) -> int:
        return max((r.syncs for r in self.steps), default=0)

    @property
    def mean_syncs_per_step(self) -> float:
        return sum(r.syncs for r in self.steps) / max(len(self.steps), 1)

    @property
    def max_syncs_per_layer(self) -> int:
        return max((n for r in self.steps for n in r.layer_syncs.values()), default=0)

    @property
    def layer_visits(self) -> int:
        return sum(len(r.layer_launches) for r in self.steps)

    @property
    def launches_per_layer(self) -> float:
        """Mean launches of one layer in one step, over every layer a step ran."""
        total = sum(sum(r.layer_launches.values()) for r in self.steps)
        return total / max(self.layer_visits, 1)

    @property
    def launches_per_step(self) -> float:
        return sum(r.launches for r in self.steps) / max(len(self.steps), 1)

    def summary(self) -> str:
        return (
            f"{len(self.steps)} steps: syncs/step mean {self.mean_syncs_per_step:.2f} max {self.max_syncs_per_step}, "
            f"max/layer {self.max_syncs_per_layer}, setup {self.setup.syncs}, finish {self.finish.syncs}; "
            f"launches/layer {self.launches_per_layer:.1f}, launches/step {self.launches_per_step:.0f}"
        )


class OpCounter(TorchDispatchMode):
    """``with OpCounter(model) as counter: generate(...)``, then ``counter.counts``."""

    def __init__(self, model: DiffusionTransformer, record_sites: bool = True) -> None:
        super().__init__()
        self.model = model
        self.record_sites = record_sites
        self.setup = Region()
        self.steps: list[Region] = []
        self.finish = Region()
        self.finishing = False
        self.sites: Counter = Counter()
        self.layer: int | str = OUTSIDE
        self._quiet = 0  # >0 while a Python-level sync runs (its own dispatches are not counted again)
        self._hooks: list = []
        self._patched: list[tuple[object, str, object]] = []

    @property
    def counts(self) -> OpCounts:
        return OpCounts(self.setup, self.steps, self.finish, len(self.model.blocks), self.sites)

    # -- attribution ------------------------------------------------------------------
    def _enter(self, where: int | str):
        def hook(module, args):
            self.layer = OUTSIDE if where in ("embed", HEAD) else where

        return hook

    def _region(self) -> Region:
        if self.finishing:
            return self.finish
        return self.steps[-1] if self.steps else self.setup

    def _count_sync(self, op: str) -> None:
        region = self._region()
        region.syncs += 1
        if isinstance(self.layer, int):
            region.layer_syncs[self.layer] += 1
        if self.record_sites:
            self.sites[(_caller(), op)] += 1

    # -- the mode ---------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.name.startswith("profiler::"):
            if args and isinstance(args[0], str) and args[0] == STEP:
                self.steps.append(Region())
                self.layer, self.finishing = OUTSIDE, False
            elif args and isinstance(args[0], str) and args[0] == FINISH:
                self.finishing = True
            return func(*args, **kwargs)
        if not self._quiet:
            name = func._schema.name.split("::")[-1]
            if is_sync(func, args, kwargs):
                self._count_sync(name)
            elif not _is_view(func) and name not in _ALLOCATIONS:
                region = self._region()
                region.launches += 1
                if isinstance(self.layer, int):
                    region.layer_launches[self.layer] += 1
        return func(*args, **kwargs)

    def __enter__(self):
        m = self.model
        self._hooks = [m.embed.register_forward_pre_hook(self._enter("embed"))]
        for i, block in enumerate(m.blocks):
            self._hooks += [sub.register_forward_pre_hook(self._enter(i)) for sub in block.children()]
        self._hooks += [mod.register_forward_pre_hook(self._enter(HEAD)) for mod in (m.final_norm, m.head)]
        self._patch(torch.Tensor, "tolist", "tolist")
        self._patch(torch.Tensor, "numpy", "numpy")
        self._patch(torch, "tensor", "tensor (host data)")
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)
        self._patched.clear()
        return super().__exit__(*exc)

    def _patch(self, owner: object, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        self._patched.append((owner, attr, original))

        def counted(*args, **kwargs):
            if self._quiet:
                return original(*args, **kwargs)
            self._count_sync(label)
            self._quiet += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._quiet -= 1

        setattr(owner, attr, counted)


def _caller() -> str:
    """The innermost frame in this package (not this module): where a sync was asked for."""
    for frame in reversed(traceback.extract_stack(limit=40)):
        if "dllm_accel" in frame.filename and not frame.filename.endswith("profiling.py"):
            return f"{frame.filename.split('dllm_accel/')[-1]}:{frame.lineno} {frame.name}"
    return "?"


# a kernel call in inductor's wrapper code: a generated CPU/Triton kernel, an extern kernel or an aten fallback
_KERNEL_CALL = re.compile(r"^\s+(cpp_fused_\w+\(|triton_\w+\.run\(|extern_kernels\.\w+\(|torch\.ops\.aten\.\w+)", re.M)
# our opaque operators (``models/compiled.py``) in that code, with the aten kernels each one runs
_OPAQUE_CALL = re.compile(r"^\s+torch\.ops\.dllm_accel\.(\w+)", re.M)
_OPAQUE_LAUNCHES = {"mean_square": 2, "cosine_similarity": 8}


def compiled_launches_per_layer(model: DiffusionTransformer, input_ids: torch.Tensor) -> float:
    """Kernel launches per layer of the dense pass as ``compile=True`` runs it.

    A dispatch mode cannot see inside compiled code, so this counts the calls in the wrapper
    inductor generates for the trunk (one call per launch: the wrapper has no loops), divided
    by the layers; the embedding counts with them, so it is an upper bound."""
    from torch._inductor.utils import run_and_get_code

    from .methods.base import trunk_pass
    from .models.compiled import compiling

    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    with torch.no_grad(), compiling(True):
        _, code = run_and_get_code(torch.compile(trunk_pass, dynamic=True), model, input_ids, positions, None)
    wrappers = [source.split("def call(", 1)[-1] for source in code]
    calls = sum(len(_KERNEL_CALL.findall(w)) for w in wrappers)
    calls += sum(_OPAQUE_LAUNCHES[name] for w in wrappers for name in _OPAQUE_CALL.findall(w))
    return calls / len(model.blocks)
