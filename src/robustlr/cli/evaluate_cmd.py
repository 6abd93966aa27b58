"""``robustlr evaluate`` and ``robustlr attack``: robust accuracy over attacks × ε, reports on disk."""

from __future__ import annotations

import argparse
import io
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from ..evaluate import at_eps, evaluate
from ..files import file_stem
from ..report import STAGE_COLUMNS, STANDARD_COLUMNS, SUMMARY_COLUMNS, atomic_write_bytes, format_table, write_report
from ..train import AMP_MODES
from ..train.precision import AMP_DTYPES
from .options import (add_attack_options, add_data_options, add_model_options, add_run_options, add_suite_options,
                      options_record)
from .outputs import check_out
from .plan import plan_attacks
from .setup import check_counts, check_model_fits, device_of, load_data, load_model

__all__ = ["register"]

DEFAULT_ATTACKS = ["fgsm", "pgd-linf", "pgd-l2", "lora-pgd"]


class _Recorder:
    """Wraps an attack and keeps every adversarial batch it returns (for ``robustlr attack``); every other
    attribute (``eps``, ``norm``, ``rank``, ``n_target_classes``, ``repr``) is the attack's, and so is its class
    for ``isinstance`` (its family, :mod:`robustlr.evaluation.families`), so evaluate checks and reports the
    recorded attack exactly as the bare one."""

    def __init__(self, attack):
        self.attack, self.batches = attack, []

    def __getattr__(self, name: str):
        return getattr(self.attack, name)

    @property  # type: ignore[misc]
    def __class__(self):
        return type(self.attack)

    def __repr__(self) -> str:
        return repr(self.attack)

    def __call__(self, x, y):
        out = self.attack(x, y)
        self.batches.append(out.detach().cpu())
        return out


CONTINUE_HINT = "rerun the command (nothing is resumable: the report is written at the end; the same --out is replaced)"


def run(args: argparse.Namespace, save_adversarial: bool) -> int:
    """Check every input (device, output directory, counts, data, model and its fit, attacks and budgets)
    before any work, then evaluate each threat model (under :func:`amp_context` of ``--amp``) and write its
    report into ``--out``; the report's options record ``amp``."""
    device = device_of(args)
    output = check_out(args, args.command)
    check_counts(args)
    torch.manual_seed(args.seed)
    data = load_data(args)
    model = load_model(args, data, device)
    check_model_fits(model, data, args, device)
    plans = plan_attacks(args, model, data)
    out = output.create()
    recorders: dict[str, _Recorder] = {}
    for plan in plans:
        if save_adversarial:
            plan.attacks = {name: _wrap(spec, name, recorders) for name, spec in plan.attacks.items()}
        with amp_context(args.amp, device):
            result = evaluate(model, data, plan.attacks, plan.eps, cascade=plan.cascade, batch_size=args.batch_size,
                              device=device, progress=not args.no_progress)
        target = out / plan.norm if len(plans) > 1 else out
        precision = "" if args.amp is None else f", {args.amp} autocast"
        write_report(result, target, title=f"robustlr {args.command}: {args.data} ({plan.norm}{precision})",
                     extra={"options": options_record(args), "norm": plan.norm})
        print(f"\n{plan.norm}: clean accuracy {result.clean_accuracy:.4f} on n = {result.n}")
        print(format_table(result.rows(), SUMMARY_COLUMNS))
        if plan.cascade:
            print(format_table(result.stage_rows(), STAGE_COLUMNS))
            print(format_table(result.standard_rows(), STANDARD_COLUMNS))
        for note in result.notes:
            print(f"note: {note}")
    for key, rec in recorders.items():
        atomic_write_bytes(out / "adversarial" / f"{key}.pt", _tensor_bytes(torch.cat(rec.batches)))
    output.finish()
    print(f"\nreport written to {out}")
    return 0


def amp_context(amp: str | None, device: torch.device) -> AbstractContextManager[Any]:
    """The context of the evaluation under ``--amp``: ``torch.autocast(device.type, AMP_DTYPES[amp])`` (the
    clean pass and every attack's forward/backward passes run in bfloat16/float16; the attacks keep their own
    arithmetic in float32 and return images that hold the budget exactly, see
    :mod:`robustlr.attacks.precision`), or nothing (full precision) without it."""
    return nullcontext() if amp is None else torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def _wrap(spec, name, recorders):
    def factory(e, spec=spec, name=name):
        rec = _Recorder(spec.factory(e))
        recorders[f"{file_stem(name)}_eps{e:g}"] = rec
        return rec

    return at_eps(factory)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def register(sub: argparse._SubParsersAction) -> None:
    for command, save, text in (
        ("evaluate", False, "clean and robust accuracy over attacks × ε, worst case per sample, report files"),
        ("attack", True, "run attacks, save the adversarial examples (adversarial/*.pt) and the evaluation report"),
    ):
        p = sub.add_parser(command, help=text, description=text)
        add_model_options(p)
        add_data_options(p)
        add_attack_options(p, DEFAULT_ATTACKS)
        if not save:  # a cascade attacks only the points still robust: `attack` saves every point's example
            add_suite_options(p)
        g = p.add_argument_group("precision")
        g.add_argument("--amp", metavar="DTYPE", choices=list(AMP_MODES),
                       help=f"a speed option: run the model's forward and backward passes (clean and attacked) "
                            f"under autocast to {' or '.join(AMP_MODES)}; the perturbations stay float32 and "
                            f"within the budget, the accuracies may move slightly (docs/attacks.md); "
                            f"default: full precision")
        add_run_options(p, command)
        p.set_defaults(handler=lambda a, save=save: run(a, save), continue_hint=CONTINUE_HINT)
