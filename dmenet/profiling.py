"""What a piece of tensor code dispatches: aten ops, host synchronisations and bytes touched.

    with DispatchCounter() as count:
        render_defocus(image, depth_mm, camera, renderer="batched")
    count.ops, count.syncs, count.bytes

A GPU runs each dispatched op as at least one kernel launch (about 5 us from eager PyTorch),
and each host synchronisation stalls the queue; the counts therefore estimate what code that
runs on the CPU here would cost on a device (:meth:`DispatchCounter.launch_bound_s`), and
they must not grow with what should be batched. Counted as synchronisations: reading a value
(``aten._local_scalar_dense``: ``int(t)``, ``bool(t)``, ``t.item()``), ops whose output size
depends on the data (``nonzero``, ``masked_select``, ``unique``, ``bincount``,
``repeat_interleave`` by a tensor) and explicit copies to the CPU (``aten._to_copy`` to
``cpu``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["BYTES_PER_S", "LAUNCH_S", "SYNC_S", "DispatchCounter", "counting_calls"]

LAUNCH_S = 5e-6
"""Seconds per dispatched op on a GPU when launches bound the time (eager PyTorch)."""

SYNC_S = 20e-6
"""Seconds per host synchronisation (a device round trip) on a GPU."""

BYTES_PER_S = 3e12
"""Memory bandwidth of an H100-class GPU (bytes/s): the time of what was counted if its
kernels' memory traffic bounds it (no cache reuse, a pessimistic bound for small batches)."""

_DATA_DEPENDENT = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select",
                   "aten.unique", "aten._unique", "aten.bincount", "aten.is_nonzero",
                   "aten.equal", "aten.item")


_ALLOCATIONS = ("aten.empty", "aten.new_empty")
"""Ops that only allocate (``empty``, ``empty_like``, ``empty_strided``, ``new_empty``...): no
kernel, no memory traffic."""


class DispatchCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while it is active (``ops``, ``by_op``), those that are
    neither views nor allocations (``kernels``: each runs at least one kernel on a GPU), the
    host synchronisations among them (``syncs``) and the bytes of the tensor inputs and outputs
    of the kernels (``bytes``, a bound on their memory traffic)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.kernels = 0
        self.syncs = 0
        self.bytes = 0

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    def launch_bound_s(self) -> float:
        """The GPU time of what was counted if launches and synchronisations bound it."""
        return self.ops * LAUNCH_S + self.syncs * SYNC_S

    def bandwidth_bound_s(self) -> float:
        """The GPU time of what was counted if the kernels' memory traffic bounds it."""
        return self.bytes / BYTES_PER_S

    @staticmethod
    def _is_sync(name: str, args, kwargs) -> bool:
        if name.startswith(_DATA_DEPENDENT):
            return True
        if name.startswith("aten.repeat_interleave") and len(args) > 1 and torch.is_tensor(
                args[1]):
            return True
        if name.startswith("aten._to_copy"):
            device = kwargs.get("device")
            return device is not None and torch.device(device).type == "cpu"
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func)
        self.by_op[name] += 1
        if self._is_sync(name, args, kwargs):
            self.syncs += 1
        if not func.is_view and not name.startswith(_ALLOCATIONS):
            self.kernels += 1
            # an ``out=`` tensor is what the op returns: counted once, as written
            given = {k: v for k, v in kwargs.items() if k != "out"}
            for t in tree_flatten((args, given, out))[0]:
                if torch.is_tensor(t):
                    self.bytes += t.numel() * t.element_size()
        return out


@contextmanager
def counting_calls(owner, name: str, keep: Callable[[tuple], Any] = lambda args: args,
                   ) -> Iterator[list[tuple[DispatchCounter, Any]]]:
    """While active, every call of ``owner.name`` (a module's function, as the code under test
    looks it up) is counted on its own: yields a list that receives ``(count, keep(args))`` per
    call (``keep``: what to hold of its arguments; the arguments themselves by default, which
    holds their tensors until the list goes). An outer :class:`DispatchCounter` still counts
    those ops too, so the part of a whole that a function dispatches is the sum of its calls'
    counts."""
    function, calls = getattr(owner, name), []

    def counted(*args, **kwargs):
        with DispatchCounter() as count:
            out = function(*args, **kwargs)
        calls.append((count, keep(args)))
        return out

    setattr(owner, name, counted)
    try:
        yield calls
    finally:
        setattr(owner, name, function)
