"""Count the host round trips of a block of code, on any device (CPU included).

A GPU stalls whenever the host waits for a value: every ``.item()``, ``float()``, ``int()``, ``bool()`` of a
tensor (they dispatch ``aten._local_scalar_dense``) and every copy of a tensor to the host (``.cpu()``,
``.to("cpu")``, ``.numpy()``, ``.tolist()``; a ``.to(x.device)`` is not counted).  On a CPU machine those copies are free, so they are counted
where they are asked for (a :class:`~torch.overrides.TorchFunctionMode` sees the method calls), and the scalar
reads where they are executed (a :class:`~torch.utils._python_dispatch.TorchDispatchMode`).  The count is what
a GPU would wait for, measured on the CPU.  The tests use it to hold the engine to a budget of round trips per
attack call, training step, evaluation batch and CondLR step; ``make bench`` reports the counts.

>>> from robustlr.profiling import HostSyncs
>>> with HostSyncs() as syncs:
...     attack(x, y)
>>> syncs.total, syncs.events
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncs"]

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


class _Reads(TorchDispatchMode):
    def __init__(self, events: Counter) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.events["scalar read: aten._local_scalar_dense"] += 1
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """Context manager: ``events`` counts each kind of host round trip made inside the block."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self._modes = (_Copies(self.events), _Reads(self.events))

    @property
    def total(self) -> int:
        """All round trips: scalar reads plus copies to the host."""
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
