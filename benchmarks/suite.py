"""Evaluation-suite benchmarks: robustlr's AutoAttack and APGD-CE against the original AutoAttack (pyautoattack),
and LoRa-APGD against LoRa-PGD at equal numbers of forward/backward passes.

On one model, the same test images and one L2 ε, in one run (:func:`run`):
  (a) robust accuracy of ``evaluate(suite="autoattack")`` − pyautoattack's standard AutoAttack, points  goal ≤ +0.5
  (b) time of ours / theirs (the whole evaluation call each)                                          goal ≤ 0.7
      (and the images each made the model see, forward and backward, and the model's own time for them: the
      floor of any implementation making those passes; :func:`autoattack_rows`)
  (c) APGD-CE, 100 steps, on the clean-correct images: our time / ``APGDAttack``'s                    goal ≤ 1.0
      (and with ``early_stop=True``, as the suite runs it: reference)
  (d) APGD-CE robust accuracy, ours − theirs, points                                                 goal within ±1
  (e) LoRa-APGD − LoRa-PGD robust accuracy (points) and time ratio at 30 passes, rank 3              (reference)

The model is the L2-PGD-trained LeNet5 of ``experiments/lorapgd-table.toml`` (run ``pgd-l2``), trained into
``--models`` if it is not there yet (about 10 minutes on one CPU thread; reused afterwards): a model with
non-trivial robustness, where the attacks' differences show.  ``--model standard`` takes the standard LeNet5,
``--model pgd-linf`` one that masks gradients at L2 (:data:`MASKING`, about 5 minutes to train).  Timings of
(a)–(b) are the medians of two calls each, in turn (ours, theirs, ours, theirs: an AutoAttack run takes minutes,
over which this machine's speed drifts); (c) and (e) interleave the two (a, b, a, b, …), medians.

``--engine`` instead measures the two AutoAttacks without a model's cost (:func:`engine_rows`): their time on a
near-zero-cost model, and their host round trips per call (what a GPU waits for).

``--passes-table`` instead writes the equal-passes comparison of docs/attacks.md ("LoRa-APGD"): LoRa-PGD,
LoRa-APGD and APGD-CE at 10, 30 and 100 passes, on both LeNet5 runs (standard and PGD-trained), L2 ε 0.5 / 1 /
1.5, ranks 3 and 8 (10 % and 30 % of 28).  Passes: LoRa-PGD of ``k`` steps makes ``k`` forward+backward passes,
LoRa-APGD and APGD of ``k − 1`` steps make ``k`` (the start and every step; APGD one more forward pass).

Run:  python benchmarks/suite.py [--n 300] [--eps 1.0] [--model pgd-l2|standard|pgd-linf] [--threads 1] [--models DIR]
      python benchmarks/suite.py --engine
      python benchmarks/suite.py --passes-table [--n 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from common import device_name, interleaved_times

from robustlr.attacks import APGD, LoRaAPGD, LoRaPGD
from robustlr.data import load_dataset
from robustlr.evaluate import RobustnessWarning, evaluate
from robustlr.reproduce.configs import load_experiment
from robustlr.reproduce.training import train_config
from robustlr.train import ensure_trained, load_trained

PEER = "pyautoattack"
MODELS = Path(__file__).resolve().parents[1] / "runs" / "reproduce" / "lorapgd-vs-autoattack"
"""Where the experiment lorapgd-vs-autoattack trains its LeNet5 runs (the same as lorapgd-table's)."""


MASKING = {"id": "pgd-linf", "adv": "pgd", "adv_norm": "linf", "adv_eps": 0.2}
"""A third LeNet5, trained with L∞ PGD at a large ε (0.2) and otherwise as lorapgd-table's runs: attacked at L2
ε = 2 it masks gradients — FAB-T and Square break many points APGD leaves robust (on 100 test images, robust
accuracy 0.32 after APGD-CE, 0.11 after the whole suite) — the case the suite's later stages exist for."""

RUN_IDS = ("pgd-l2", "standard", MASKING["id"])


def lenet5(run_id: str, models: Path, device: torch.device) -> nn.Module:
    """The LeNet5 run ``run_id`` (``standard`` or ``pgd-l2`` of lorapgd-table, or ``pgd-linf``: :data:`MASKING`),
    trained into ``models/<run_id>`` if missing, loaded from its ``best.pt`` in eval mode."""
    runs = {r["id"]: r for r in load_experiment("lorapgd-table").runs}
    run = {**runs["pgd-l2"], **MASKING} if run_id == MASKING["id"] else runs[run_id]
    ensure_trained(train_config(run, models), progress=False)
    model, _ = load_trained(models / run_id / "best.pt", device=device)
    return model


def test_images(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Fashion-MNIST test images and labels."""
    test = load_dataset("fashion-mnist", "test")
    return test.images[:n].to(device), test.labels[:n].to(device)


def robust(model: nn.Module, adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Robust accuracy: correct on the clean image and on ``adv`` (a count over ``len(y)``, exact)."""
    with torch.no_grad():
        return int(((model(x).argmax(dim=1) == y) & (model(adv).argmax(dim=1) == y)).sum()) / len(y)


class PassCounter(nn.Module):
    """``model``, counting the images it is run on: forward passes without and with a graph, and backward passes
    through its output (each backward that reaches the output counts its batch once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.counts = {"forward": 0, "forward_graph": 0, "backward": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        n = x.shape[0]
        if out.requires_grad:
            self.counts["forward_graph"] += n
            out.register_hook(lambda grad: self.counts.__setitem__("backward", self.counts["backward"] + n))
        else:
            self.counts["forward"] += n
        return out


def pass_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Seconds per image of the model's passes at the batch of ``x``: a forward without a graph, a forward
    with one (input gradient on), and the backward of the cross-entropy to the input."""
    def plain() -> None:
        with torch.no_grad():
            model(x)

    def graph() -> None:
        model(x.detach().requires_grad_(True))

    def both() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(model(xg), y), xg)

    t = interleaved_times({"forward": plain, "forward_graph": graph, "both": both}, x.device, repeats)
    n = x.shape[0]
    return {"forward": t["forward"] / n, "forward_graph": t["forward_graph"] / n,
            "backward": max(t["both"] - t["forward_graph"], 0.0) / n}


def autoattack_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int,
                    calls: int = 2) -> dict[str, float]:
    """(a), (b): our suite (the cascade of :func:`robustlr.evaluate.evaluate`) and pyautoattack's standard
    version at L2 ``eps``, ``calls`` calls each, in turn (ours, theirs, ours, …: a drift of the machine's speed
    over the minutes of a call hits both), the median time of each.  Both run on a :class:`PassCounter` of the
    model: the images each makes the model see, and the model's time for them alone (the counts times
    :func:`pass_seconds`, measured at the batch of the points still robust after APGD-CE): the floor of any
    implementation making those passes, and ``autoattack_time_floor_ours_vs_theirs`` the time ratio an engine
    without overhead would give."""
    from pyautoattack import AutoAttack

    seconds: dict[str, list[float]] = {"ours": [], "theirs": []}
    for call in range(calls):
        ours_model, peer_model = PassCounter(model), PassCounter(model)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the robustness flags of a robust model's evaluation: not this benchmark's
            warnings.simplefilter("ignore", RobustnessWarning)
            ours = evaluate(ours_model, (x, y), eps_grid=[eps], suite="autoattack", norm="l2", batch_size=batch,
                            progress=False)
        seconds["ours"].append(time.perf_counter() - t0)
        peer = AutoAttack(peer_model, norm="L2", eps=eps, version="standard", seed=0, device=x.device)
        t0 = time.perf_counter()
        _, y_adv = peer.run_standard_evaluation(x, y, batch_size=batch)
        seconds["theirs"].append(time.perf_counter() - t0)
    t_ours, t_peer = statistics.median(seconds["ours"]), statistics.median(seconds["theirs"])
    ra_ours, ra_peer = ours.worst_at(eps, norm="l2").robust_accuracy, int((y_adv == y).sum()) / len(y)
    later = max(round(ours.attacks[0].robust_accuracy * len(y)), 1)  # the points the stages after APGD-CE see
    per_image = pass_seconds(model, x[:later], y[:later])
    floor = {name: sum(counter.counts[kind] * per_image[kind] for kind in per_image)
             for name, counter in (("ours", ours_model), ("theirs", peer_model))}
    return {"autoattack_points_ours_minus_theirs": 100 * (ra_ours - ra_peer), "autoattack_time_ours_vs_theirs":
            t_ours / t_peer, "autoattack_robust_ours": ra_ours, "autoattack_robust_theirs": ra_peer,
            "autoattack_seconds_ours": t_ours, "autoattack_seconds_theirs": t_peer,
            "autoattack_masking_flagged": float(any("gradient masking likely" in w for w in ours.warnings)),
            **{f"autoattack_{kind}_images_ours_vs_theirs": ours_model.counts[kind] / max(peer_model.counts[kind], 1)
               for kind in ours_model.counts},
            "autoattack_model_seconds_ours": floor["ours"], "autoattack_model_seconds_theirs": floor["theirs"],
            "autoattack_time_floor_ours_vs_theirs": floor["ours"] / floor["theirs"],
            "clean_accuracy": ours.clean_accuracy}


def engine_rows(device: torch.device, n: int = 64, counted: int = 16, repeats: int = 2) -> dict[str, float]:
    """The two AutoAttacks' own cost, without the model's: a near-zero-cost model (one linear layer on 28×28
    images) and an ε (L2 1e-3) at which no point breaks, so that every stage runs in full on every point.
    ``autoattack_engine_time_ours_vs_theirs``: the time of the two calls on ``n`` images, interleaved (medians
    of ``repeats``); ``autoattack_host_reads_*``: the host round trips of one call on ``counted`` images
    (:class:`robustlr.profiling.HostSyncs`: what a GPU waits for — scalar reads, data-dependent sizes, host
    copies); ``autoattack_device_ops_*``: the operators of that call (:class:`robustlr.profiling.DeviceOps`: a
    kernel launch each on a GPU)."""
    from pyautoattack import AutoAttack

    from robustlr.profiling import DeviceOps, HostSyncs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).to(device).eval()
    x = torch.rand(n, 1, 28, 28, device=device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every point clean-correct
    eps = 1e-3

    def ours(k: int) -> None:
        evaluate(model, (x[:k], y[:k]), eps_grid=[eps], suite="autoattack", norm="l2", batch_size=500,
                 progress=False)

    def theirs(k: int) -> None:
        peer = AutoAttack(model, norm="L2", eps=eps, version="standard", seed=0, device=x.device)
        peer.run_standard_evaluation(x[:k], y[:k], batch_size=500)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        t = interleaved_times({"ours": lambda: ours(n), "theirs": lambda: theirs(n)}, device, repeats)
        reads, ops = {}, {}
        for name, fn in (("ours", ours), ("theirs", theirs)):
            with HostSyncs() as syncs, DeviceOps() as launches:
                fn(counted)
            reads[name], ops[name] = syncs.total, launches.total
    return {"autoattack_engine_time_ours_vs_theirs": t["ours"] / t["theirs"],
            "autoattack_host_reads_images": counted,
            "autoattack_host_reads_ours": reads["ours"], "autoattack_host_reads_theirs": reads["theirs"],
            "autoattack_host_reads_ours_vs_theirs": reads["ours"] / reads["theirs"],
            "autoattack_device_ops_ours": ops["ours"], "autoattack_device_ops_theirs": ops["theirs"],
            "autoattack_device_ops_ours_vs_theirs": ops["ours"] / ops["theirs"]}


def apgd_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, repeats: int) -> dict[str, float]:
    """(c), (d): APGD-CE with 100 steps, ρ = 0.75, one restart, on the clean-correct images of ``x``."""
    from pyautoattack.autopgd_base import APGDAttack

    with torch.no_grad():
        keep = model(x).argmax(dim=1) == y
    x, y = x[keep], y[keep]
    ours = APGD(model, eps, "l2", steps=100, loss="ce", seed=0)
    early = APGD(model, eps, "l2", steps=100, loss="ce", seed=0, early_stop=True)  # as the suite runs it
    peer = APGDAttack(model, n_iter=100, norm="L2", n_restarts=1, eps=eps, seed=0, loss="ce", rho=0.75,
                      device=x.device)
    out: dict[str, torch.Tensor] = {}
    t = interleaved_times({"ours": lambda: out.__setitem__("ours", ours(x, y)),
                           "early": lambda: out.__setitem__("early", early(x, y)),
                           "theirs": lambda: out.__setitem__("theirs", peer.perturb(x, y))}, x.device, repeats)
    ra_ours, ra_peer = robust(model, out["ours"], x, y), robust(model, out["theirs"], x, y)
    if robust(model, out["early"], x, y) != ra_ours:
        print("  note: APGD-CE with early_stop left a different robust accuracy "
              f"({robust(model, out['early'], x, y):.4f} vs {ra_ours:.4f})")
    share = int(keep.sum()) / len(keep)  # robust accuracy over all of x, as the suite counts it
    return {"apgd_ce_time_ours_vs_theirs": t["ours"] / t["theirs"],
            "apgd_ce_early_stop_time_ours_vs_theirs": t["early"] / t["theirs"],
            "apgd_ce_points_ours_minus_theirs": 100 * share * (ra_ours - ra_peer),
            "apgd_ce_seconds_ours": t["ours"], "apgd_ce_seconds_theirs": t["theirs"], "apgd_ce_points": int(keep.sum())}


def equal_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, passes: int, rank: int | None,
                 repeats: int = 1) -> dict[str, tuple[float, float]]:
    """Robust accuracy and seconds of LoRa-PGD and LoRa-APGD at rank ``rank`` (both skipped for ``None``) and of
    APGD-CE, each given ``passes`` forward+backward passes (module docstring), timed interleaved."""
    attacks = {"apgd-ce": APGD(model, eps, "l2", steps=passes - 1, seed=0)} if rank is None else {
        "lora-pgd": LoRaPGD(model, eps, rank, "l2", steps=passes, seed=0),
        "lora-apgd": LoRaAPGD(model, eps, rank, "l2", steps=passes - 1, seed=0)}
    out: dict[str, torch.Tensor] = {}
    fns = {name: (lambda name=name, atk=atk: out.__setitem__(name, atk(x, y))) for name, atk in attacks.items()}
    if repeats > 1:
        seconds = interleaved_times(fns, x.device, repeats)
    else:
        seconds = {name: _timed(fn) for name, fn in fns.items()}
    return {name: (robust(model, out[name], x, y), seconds[name]) for name in attacks}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def lora_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, repeats: int) -> dict[str, float]:
    """(e): LoRa-APGD vs LoRa-PGD at 30 passes, rank 3."""
    res = equal_passes(model, x, y, eps, 30, 3, repeats)
    (ra_a, t_a), (ra_p, t_p) = res["lora-apgd"], res["lora-pgd"]
    return {"lora_apgd_minus_lora_pgd_points_30_passes": 100 * (ra_a - ra_p), "lora_apgd_vs_lora_pgd_time": t_a / t_p,
            "lora_apgd_robust_30_passes": ra_a, "lora_pgd_robust_30_passes": ra_p}


def run(n: int, eps: float, models: Path, device: torch.device, repeats: int, batch: int,
        run_id: str = "pgd-l2", suite_only: bool = False) -> dict[str, float]:
    """Every row of the module docstring on the LeNet5 ``run_id`` (default: the PGD-trained one) and the first
    ``n`` test images; ``suite_only``: rows (a) and (b) only."""
    model = lenet5(run_id, models, device)
    x, y = test_images(n, device)
    rows = autoattack_rows(model, x, y, eps, batch)
    if not suite_only:
        rows.update(**apgd_rows(model, x, y, eps, repeats), **lora_rows(model, x, y, eps, repeats))
    return {**rows, "n": n, "eps": eps}


def passes_table(n: int, models: Path, device: torch.device) -> list[dict[str, object]]:
    """The rows of docs/attacks.md's equal-passes comparison (module docstring), printed as they come."""
    x, y = test_images(n, device)
    rows = []
    for run_id in ("standard", "pgd-l2"):
        model = lenet5(run_id, models, device)
        for eps in (0.5, 1.0, 1.5):
            for passes in (10, 30, 100):
                for rank in (None, 3, 8):
                    for attack, (ra, seconds) in equal_passes(model, x, y, eps, passes, rank).items():
                        rows.append({"model": run_id, "eps": eps, "passes": passes, "attack": attack, "rank": rank,
                                     "robust_accuracy": ra, "seconds": seconds})
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=None, help="test images (default 300; --passes-table: 500)")
    parser.add_argument("--eps", type=float, default=1.0, help="L2 budget of (a)-(e) (default %(default)s)")
    parser.add_argument("--batch", type=int, default=500, help="batch size of both AutoAttacks")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of (c) and (e)")
    parser.add_argument("--models", type=Path, default=MODELS, help="where the LeNet5 runs are (or are trained)")
    parser.add_argument("--model", choices=RUN_IDS, default="pgd-l2",
                        help="which LeNet5: a run of lorapgd-table or pgd-linf, the gradient-masking one (default: "
                             "%(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--passes-table", action="store_true", help="instead: docs/attacks.md's equal-passes table")
    parser.add_argument("--engine", action="store_true",
                        help="instead: both AutoAttacks on a near-zero-cost model, time and host round trips")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    if args.passes_table:
        result: object = passes_table(args.n or 500, args.models, device)
    elif args.engine:
        result = engine_rows(device, args.n or 64)
        for key, value in result.items():
            print(f"  {key:44s} {value:.4g}")
    else:
        import importlib

        importlib.import_module(PEER)  # the peer is required: fail before training or attacking anything
        result = run(args.n or 300, args.eps, args.models, device, args.repeats, args.batch, args.model)
        for key, value in result.items():
            print(f"  {key:44s} {value:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(device), "torch": torch.__version__,
                                               "results": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
