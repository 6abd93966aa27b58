"""``--nproc N``: run a function in ``N`` local processes that form one ``torch.distributed`` group.

:func:`launch` spawns ``N`` workers with ``torch.multiprocessing`` (start method ``spawn``) and gives each the
environment ``torchrun`` would (``RANK = LOCAL_RANK``, ``WORLD_SIZE = LOCAL_WORLD_SIZE = N``, ``MASTER_ADDR``
127.0.0.1 and a free ``MASTER_PORT``), so the code inside cannot tell the two launchers apart. Workers that
die with the launcher: each receives SIGINT when its parent dies (``PR_SET_PDEATHSIG``, set by
``torch.multiprocessing``), which the trainer honours like Ctrl-C. SIGINT and SIGTERM sent to the launcher
are forwarded to the workers. Without ``OMP_NUM_THREADS`` in the environment each worker uses
``cpu_count // N`` threads (at least one), so that the workers do not oversubscribe the cores.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
import torch.multiprocessing as mp

from robustlr.checks import check_int

__all__ = ["launch"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _worker(local_rank: int, nproc: int, port: int, fn: Callable[..., int], args: tuple[Any, ...]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(local_rank),
                       "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)})
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    code = fn(*args)
    if code:
        sys.exit(code)


def launch(nproc: int, fn: Callable[..., int], *args: Any) -> int:
    """Run ``fn(*args)`` in ``nproc`` processes of one process group (see the module docstring) and return the
    exit code: 0 when every worker returned 0, else the first failing worker's code (``fn``'s non-zero return
    value, 128 + the signal that killed it, or 1 for an uncaught exception, whose message is printed).

    ``fn`` and ``args`` must be picklable (a module-level function, plain data).

    Raises:
        ValueError: if ``nproc`` is not an integer >= 1.
    """
    check_int("nproc", nproc, 1)
    context = mp.start_processes(_worker, args=(nproc, _free_port(), fn, args), nprocs=nproc, join=False,
                                 start_method="spawn")

    def forward(signum: int, frame: FrameType | None) -> None:
        for pid in context.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    main_thread = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as failure:
        return 128 - failure.exit_code if failure.exit_code < 0 else failure.exit_code
    except mp.ProcessRaisedException as failure:
        last = str(failure).strip().splitlines()[-1]
        print(f"robustlr: error: process {failure.error_index} failed: {last}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
