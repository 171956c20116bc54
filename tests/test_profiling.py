"""dmenet.profiling: counting what a piece of tensor code dispatches, hand-counted cases."""

import types

import torch

from dmenet.profiling import DispatchCounter, counting_calls


def test_a_function_is_counted_on_its_own_and_within_the_whole():
    def scale_and_shift(x):
        return x * 2 + 1  # two ops

    owner = types.SimpleNamespace(scale_and_shift=scale_and_shift)
    x = torch.ones(3)
    with counting_calls(owner, "scale_and_shift") as calls, DispatchCounter() as whole:
        owner.scale_and_shift(x)
        owner.scale_and_shift(x[:2])
        x.neg()  # one op outside the function
    assert [(c.ops, args[0].shape[0]) for c, args in calls] == [(2, 3), (2, 2)]
    assert whole.ops == 2 + 2 + 1 + 1  # the slice x[:2] is a view op, counted too
    assert owner.scale_and_shift is scale_and_shift  # restored
    # keep: what is held of each call's arguments (here a length, not the tensor)
    with counting_calls(owner, "scale_and_shift", keep=lambda args: len(args[0])) as calls:
        owner.scale_and_shift(x)
    assert [(c.ops, kept) for c, kept in calls] == [(2, 3)]


def test_bytes_count_what_kernels_read_and_write_once():
    """Hand-counted: an op reads its inputs and writes its output; an ``out=`` tensor is written
    once; allocating and viewing move nothing; a host read is a synchronisation."""
    x = torch.ones(10, 10)  # 400 bytes
    with DispatchCounter() as count:
        y = torch.empty_like(x)
        torch.mul(x, 2, out=y)  # reads x, writes y: 800
        y.add_(x)  # reads y and x, writes y: 1200
        x[:5].neg()  # a view, then reads 200 and writes 200: 400
        float(x.sum())  # reads 400, writes 4; then copies 4 to the host: a sync
    assert count.bytes == 800 + 1200 + 400 + 404 + 4
    assert count.kernels == 5
    assert count.syncs == 1
