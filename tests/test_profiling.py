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
