"""DDP made ready for GPUs, proven on the CPU: ``set_device(LOCAL_RANK)`` under any process group, only this
process's GPU RNG state in ``resume.pt``, the replica hash on the device, warm-start rows gathered with tensor
collectives, and an input error on one rank raised on every rank (gloo, two processes, short timeouts).

``torch.cuda`` is replaced by recorders where a GPU would be needed; NCCL itself is not exercised here.
"""

from __future__ import annotations

import datetime
import gc
from dataclasses import asdict

import pytest
import torch
import torch.distributed as dist
from torch import nn

from robustlr.attacks import PGD
from robustlr.lowrank import to_lowrank
from robustlr.profiling import HostSyncs
from robustlr.train import launch
from robustlr.train.checkpointing import TrainState, restore, rng_state
from robustlr.train.distributed import Distributed
from robustlr.train.replicas import check_in_sync, parameter_hashes, tensor_hash
from robustlr.train.step import BatchContext, Stepper
from robustlr.train.warm_start import PerturbationBank

TIMEOUT = datetime.timedelta(seconds=30)  # a collective left waiting fails after this instead of hanging


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with two GPUs as far as robustlr asks: every call that would touch a GPU is recorded."""
    calls: list[tuple] = []
    states = {0: torch.tensor([10], dtype=torch.uint8), 1: torch.tensor([11], dtype=torch.uint8)}

    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"torch.cuda.{name} touches every GPU")
        return call

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: (calls.append(("get", device)),
                                                                      states[device.index])[1])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", state, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", forbidden("get_rng_state_all"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", forbidden("set_rng_state_all"))
    return calls


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment of local rank 1 of two (the group itself has this one process)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


_init_process_group = dist.init_process_group


def _one_process_group():
    _init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def test_set_device_is_called_under_a_group_the_caller_created(fake_cuda, torchrun_env):
    _one_process_group()
    group = Distributed.from_env(torch.device("cuda"))
    assert fake_cuda == [("set_device", 1)]
    assert (group.owns_group, group.backend, group.local_rank) == (False, "gloo", 1)


def test_set_device_comes_before_the_group_robustlr_creates(fake_cuda, torchrun_env, monkeypatch):
    def init(backend, **kwargs):
        fake_cuda.append(("init", backend, kwargs.get("device_id")))
        _one_process_group()

    monkeypatch.setattr(dist, "init_process_group", init)
    group = Distributed.from_env(torch.device("cuda"))
    assert fake_cuda == [("set_device", 1), ("init", "nccl", torch.device("cuda", 1))]
    assert group.owns_group
    group.close()
    assert not dist.is_initialized()


def _restore(rng: dict, device: torch.device) -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "rng": [rng], "progress": asdict(TrainState())}
    restore(payload, model, optimizer, scheduler, 0, device)


def test_resume_state_holds_and_restores_only_this_process_gpu_rng(fake_cuda):
    cpu_state = torch.get_rng_state()
    state = rng_state(torch.device("cuda", 1))
    assert fake_cuda == [("get", torch.device("cuda", 1))] and torch.equal(state["cuda_device"], torch.tensor([11]))
    _restore(state, torch.device("cuda", 1))
    assert fake_cuda[1:] == [("set", state["cuda_device"], torch.device("cuda", 1))]
    assert torch.equal(torch.get_rng_state(), cpu_state)
    fake_cuda.clear()  # a CPU run asks no GPU, even on a machine with GPUs
    assert rng_state(torch.device("cpu"))["cuda_device"] is None and fake_cuda == []


def test_resume_files_with_every_gpus_rng_state_restore_this_gpus(fake_cuda):
    every = [torch.tensor([20], dtype=torch.uint8), torch.tensor([21], dtype=torch.uint8)]
    _restore({"torch": torch.get_rng_state(), "cuda": every}, torch.device("cuda", 1))
    assert fake_cuda == [("set", every[1], torch.device("cuda", 1))]
    fake_cuda.clear()  # written on a machine without CUDA: nothing to restore
    _restore({"torch": torch.get_rng_state(), "cuda": []}, torch.device("cuda", 1))
    assert fake_cuda == []
    with pytest.raises(ValueError, match=r"cover 1 GPU.*none for cuda:1.*cuda:0\.\.cuda:0"):
        _restore({"torch": torch.get_rng_state(), "cuda": every[:1]}, torch.device("cuda", 1))


def _net(layers: int) -> nn.Module:
    return nn.Sequential(*(nn.Linear(6, 6) for _ in range(layers)))


def test_parameter_hash_changes_with_any_single_bit_and_is_deterministic():
    torch.manual_seed(0)
    weights = torch.randn(33, 7)
    reference = tensor_hash(weights)
    assert torch.equal(tensor_hash(weights.clone()), reference)
    bits = weights.view(torch.int32)
    for position in torch.randint(0, weights.numel(), (40,)).tolist():
        for bit in (0, 13, 31):
            flipped = bits.clone().view(-1)
            flipped[position] ^= (1 << bit) if bit < 31 else -(1 << 31)
            assert not torch.equal(tensor_hash(flipped.view(torch.float32)), reference), (position, bit)
    swapped = weights.clone().view(-1)  # the position is part of the hash: a permutation is a change
    swapped[[0, 1]] = swapped[[1, 0]]
    assert not torch.equal(tensor_hash(swapped), reference)
    for odd in (torch.randn(5, dtype=torch.float16), torch.randn(3, dtype=torch.bfloat16)):  # 10 and 6 bytes
        assert tensor_hash(odd).dtype == torch.int64


def test_the_hash_includes_low_rank_ranks():
    torch.manual_seed(0)
    model = to_lowrank(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), rank=0.5)
    names, hashes = parameter_hashes(model)
    assert [name for name in names if name.endswith(".rank")] == ["0.rank", "1.rank"]
    assert hashes.tolist()[-2:] == [4, 4]


@pytest.mark.parametrize("layers", [10, 100])
def test_replica_check_costs_one_host_read_per_epoch_whatever_the_model(layers):
    model = _net(layers)
    with HostSyncs() as hashing:
        parameter_hashes(model)
    with HostSyncs() as checking:
        digest = check_in_sync(model, Distributed(), "after epoch 1")
    assert hashing.total == 0  # the hashes stay on the device
    assert checking.total == 1, checking.events  # budget: the one read of hashes and mismatch table per epoch
    assert digest == check_in_sync(model, Distributed(), "again")


def test_a_single_process_passes_errors_through_unchanged():
    group = Distributed()
    with pytest.raises(ValueError, match=r"^x must be$"):
        with group.raise_on_all():
            raise ValueError("x must be")
    fn = lambda: 1  # noqa: E731
    assert group.agreed(fn) is fn


# ------------------------------------------------------------------------------------ two gloo processes
def _join_with_timeout() -> Distributed:
    """The caller's own group (as under torchrun with a framework that initialised it), with a short timeout."""
    dist.init_process_group("gloo", timeout=TIMEOUT)
    return Distributed.from_env(torch.device("cpu"))


def _leave() -> None:
    """Wait for the other process, then destroy the group (a process leaving first can abort the other's gloo).

    Objects that hold the group (a DistributedDataParallel wrapper) must be gone by then: collected first, so the
    group's gloo threads are joined now and not at interpreter shutdown, where they abort the process (SIGABRT,
    "terminate called without an active exception"; about 1 run in 25 of the DDP test below under load)."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _bad_batch_on_rank_1(seed: int) -> int:
    """Adversarial training step where rank 1's shard is out of [0, 1]: both ranks must raise the attack's error."""
    group = _join_with_timeout()
    try:
        return _bad_batch_steps(group, seed)  # its DDP wrapper dies with its frame, before _leave
    finally:
        _leave()


def _bad_batch_steps(group: Distributed, seed: int) -> int:
    """Two steps of the test above: a good batch on both ranks, then rank 1's bad one; 0 if both raise."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    attack = group.agreed(lambda module, x, y, context: (PGD(module, 0.1, steps=2, seed=seed)(x, y), y))
    stepper = Stepper(group.wrap(model), optimizer, attack, module=model, world_size=group.world_size,
                      reduce=group.sum)
    x, y = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    context = BatchContext(1, 0, torch.arange(4) + 4 * group.rank, torch.arange(4) + 4 * group.rank, 8)
    stepper(x, y, context)  # a good batch on both ranks: a normal step
    try:
        stepper(x * 3 if group.rank == 1 else x, y, context)
    except ValueError as error:
        message = str(error)
        if not (message.startswith("x must") and message.endswith("(raised on rank 1)")):
            return 3
        return 0  # and nobody is left inside a collective: _leave's barrier completes
    return 4


def test_a_bad_batch_on_one_rank_is_an_error_on_every_rank_not_a_hang():
    assert launch(2, _bad_batch_on_rank_1, 0) == 0


def _rows(ids: torch.Tensor) -> list[torch.Tensor]:
    value = ids.to(torch.float32)[:, None, None, None]
    return [value + torch.arange(6.0).reshape(1, 1, 2, 3), -value[:, :, 0, 0].expand(-1, 2)]


def _store_every_shard(seed: int) -> int:
    """Rank 0 stores 3 rows then none, rank 1 one row then two: the gathered bank is the bank of all shards."""
    group = _join_with_timeout()
    try:
        shards = [[torch.tensor([7, 2, 9]), torch.tensor([], dtype=torch.long)],
                  [torch.tensor([4]), torch.tensor([2, 0])]]
        bank = PerturbationBank(10, [(1, 2, 3), (2,)], (1, 2, 3), torch.device("cpu"))
        expected = PerturbationBank(10, [(1, 2, 3), (2,)], (1, 2, 3), torch.device("cpu"))
        for step in range(2):
            ids = shards[group.rank][step]
            bank.store_all(ids, _rows(ids), group, capacity=3)
            for shard in shards:
                expected.store(shard[step], _rows(shard[step]))
        same = all(torch.equal(a, b) for a, b in zip(bank.tensors, expected.tensors)) and torch.equal(
            bank.known, expected.known)
        sizes = [tuple(t.shape) for t in bank.state_dict()["tensors"]] == [(10, 1, 2, 3), (10, 2)]
        return 0 if same and sizes and int(bank.known.sum()) == 5 else 5
    finally:
        _leave()


def test_warm_start_rows_gathered_with_tensors_fill_the_bank_of_all_shards():
    assert launch(2, _store_every_shard, 0) == 0


class _Mirror(Distributed):
    """Two processes as seen from rank 0, where rank 1 sends what rank 0 sends with ids shifted by 5 (the
    collective simulated in process: HostSyncs active around a real gloo collective can abort the process)."""

    def all_gather(self, tensor):
        other = torch.where(tensor >= 0, tensor + 5, tensor) if tensor.dtype == torch.long else tensor * 2
        return torch.stack([tensor, other])


@pytest.mark.parametrize("steps", [10, 100])
def test_storing_every_shards_rows_makes_no_host_round_trip(steps):
    bank = PerturbationBank(10, [(1, 2, 3), (2,)], (1, 2, 3), torch.device("cpu"))
    group = _Mirror(rank=0, world_size=2)
    ids = torch.tensor([3, 1])
    with HostSyncs() as syncs:
        for _ in range(steps):
            bank.store_all(ids, _rows(ids), group, capacity=group.max_shard(5))
    assert syncs.total == 0, syncs.events  # budget: none per step
    assert bank.known.nonzero().flatten().tolist() == [1, 3, 6, 8]
    assert torch.equal(bank.tensors[1][[8, 6]], 2 * _rows(ids)[1])  # rank 1's rows under its ids


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_max_shard_bounds_every_block(world_size):
    for n in range(0, 30):
        sizes = [len(Distributed(rank, world_size).shard(n)) for rank in range(world_size)]
        assert max(sizes) == Distributed(0, world_size).max_shard(n)


def test_gather_rows_refuses_more_rows_than_the_capacity():
    with pytest.raises(ValueError, match=r"capacity must be >= the 3 ids.*capacity 2"):
        Distributed(rank=0, world_size=2).gather_rows(torch.arange(3), [torch.zeros(3, 2)], 2)
