"""Count the host round trips of a block of code, on any device (CPU included).

A GPU stalls whenever the host waits for a value: every ``.item()``, ``float()``, ``int()``, ``bool()`` of a
tensor (they dispatch ``aten._local_scalar_dense``), every operation whose output size depends on the data
(``nonzero``, ``torch.where(mask)``, ``x[mask]`` and ``x[mask] = v`` with a boolean mask, ``masked_select``: the
host must learn the size before it can allocate; ``nonzero_static`` is not one) and every copy of a tensor to the
host (``.cpu()``, ``.to("cpu")``, ``.numpy()``, ``.tolist()``; a ``.to(x.device)`` is not counted).  On a CPU
machine those copies are free, so they are counted where they are asked for (a
:class:`~torch.overrides.TorchFunctionMode` sees the method calls), and the scalar reads and data-dependent sizes
where they are executed (a :class:`~torch.utils._python_dispatch.TorchDispatchMode`).  The count is what
a GPU would wait for, measured on the CPU.  The tests use it to hold the engine to a budget of round trips per
attack call, training step, evaluation batch and CondLR step; ``make bench`` reports the counts.

>>> from robustlr.profiling import HostSyncs
>>> with HostSyncs() as syncs:
...     attack(x, y)
>>> syncs.total, syncs.events

:class:`DeviceOps` counts, the same way, the operators a block runs on tensors: on a GPU each is a kernel launch,
the fixed cost (a few microseconds) that decides the speed of small models.  ``make bench`` reports both counts for
the AutoAttack suite.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["DeviceOps", "HostSyncs"]

_HOST_COPIES = {"cpu", "numpy", "tolist"}


def _to_host(args: tuple, kwargs: dict) -> bool:
    """Whether a ``Tensor.to(...)`` call names the host as a literal (``"cpu"``): ``.to(x.device)`` moves to
    the data's own device, which on a CPU machine is the CPU too but on a GPU is not a host copy."""
    return any(isinstance(value, str) and torch.device(value).type == "cpu"
               for value in (*args[1:], kwargs.get("device")))


class _Copies(TorchFunctionMode):
    def __init__(self, events: Counter) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _HOST_COPIES or (name == "to" and _to_host(args, kwargs)):
            self.events[f"copy to host: Tensor.{name}"] += 1
        return func(*args, **kwargs)


_SIZE_FROM_DATA = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
                   torch.ops.aten.argwhere.default}
"""Operations whose output size is read from the data (a host round trip on a GPU)."""

_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._index_put_impl_.default}
"""Advanced indexing: a round trip when an index is a boolean mask (it is turned into ``nonzero``)."""


def _masked(indices: object) -> bool:
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class _Reads(TorchDispatchMode):
    def __init__(self, events: Counter, data_sizes: bool) -> None:
        super().__init__()
        self.events = events
        self.data_sizes = data_sizes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.events["scalar read: aten._local_scalar_dense"] += 1
        elif self.data_sizes and func in _SIZE_FROM_DATA:
            self.events[f"size from data: {func.overloadpacket.__name__}"] += 1
        elif self.data_sizes and func in _INDEXING and _masked(args[1] if len(args) > 1 else
                                                               (kwargs or {}).get("indices")):
            self.events[f"size from data: {func.overloadpacket.__name__} with a boolean mask"] += 1
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """Context manager: ``events`` counts each kind of host round trip made inside the block.

    ``data_sizes=False`` leaves out the data-dependent sizes: for code that also selects from tensors that live on
    the host (a batch's sample positions, say), which a CPU run cannot tell from device tensors.
    """

    def __init__(self, data_sizes: bool = True) -> None:
        self.events: Counter[str] = Counter()
        self._modes = (_Copies(self.events), _Reads(self.events, data_sizes))

    @property
    def total(self) -> int:
        """All round trips: scalar reads, data-dependent sizes and copies to the host."""
        return sum(self.events.values())

    def __enter__(self) -> HostSyncs:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def __repr__(self) -> str:
        return f"HostSyncs(total={self.total}, {dict(self.events)})"


_ALLOCATIONS = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_like.default,
                torch.ops.aten.empty_strided.default, torch.ops.aten.new_empty.default,
                torch.ops.aten.new_empty_strided.default}
"""Allocations that write nothing: no kernel runs (the caching allocator hands out memory)."""


class _Operators(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func not in _ALLOCATIONS and any(
                isinstance(leaf, torch.Tensor) for leaf in tree_leaves(out)):
            self.counts[func.overloadpacket.__name__] += 1
        return out


class DeviceOps:
    """Context manager: ``counts`` counts, per operator name, the operators run inside the block that produce a
    tensor, leaving out views (``view``, slicing, ``t``, ``detach``: metadata only) and bare allocations
    (``empty*``); operators that return no tensor (a scalar read, a dtype) are not counted either.  On a GPU
    each counted operator is a kernel launch; the count is an upper bound, as a few of them (``scalar_tensor``,
    say) may work on host scalars there.  ``total`` sums them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._mode = _Operators(self.counts)

    @property
    def total(self) -> int:
        """All counted operators."""
        return sum(self.counts.values())

    def __enter__(self) -> DeviceOps:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)

    def __repr__(self) -> str:
        return f"DeviceOps(total={self.total}, {dict(self.counts.most_common(8))})"
