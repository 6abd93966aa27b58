"""robustlr.profiling.DeviceOps: the operators a block runs on tensors (a kernel launch each on a GPU), views,
bare allocations and non-tensor results left out."""

from __future__ import annotations

import torch

from robustlr.profiling import DeviceOps, HostSyncs


def test_operators_are_counted_and_views_allocations_and_scalars_are_not():
    x = torch.rand(4, 3)
    with DeviceOps() as ops:
        x + 1, x.add_(1), x.clone(), x.sum()
        x.view(-1), x[1:], x.t(), x.detach(), torch.empty(3), torch.empty_like(x), x.shape
    assert ops.counts == {"add": 1, "add_": 1, "clone": 1, "sum": 1}, ops
    assert ops.total == 4


def test_the_count_grows_with_the_work_and_a_scalar_read_is_a_round_trip_not_an_operator():
    x = torch.rand(5)
    for k in (1, 7):
        with DeviceOps() as ops, HostSyncs() as syncs:
            for _ in range(k):
                x = torch.where(x > 0.5, x * 2.0, x)
            float(x.max())
        assert ops.counts == {"gt": k, "mul": k, "where": k, "max": 1}, ops
        assert syncs.total == 1
