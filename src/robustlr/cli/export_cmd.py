"""``robustlr export``: a trained (low-rank) model as plain PyTorch that loads without robustlr."""

from __future__ import annotations

import argparse

from ..lowrank.export import factored_layers
from ..lowrank.export_files import FORMATS, RECORD, check_format, export_model
from .options import CliError, add_data_options, add_model_options, device_name
from .outputs import check_out
from .setup import check_counts, check_model_fits, cli_names, device_of, load_data, load_model

__all__ = ["register"]

CONTINUE_HINT = "rerun the command (nothing is resumable: an export takes seconds; the same --out is replaced)"


def run(args: argparse.Namespace) -> int:
    """Check every input (device, output directory, format, counts, checkpoint, data, model and its fit, low-rank
    layers unless --dense) before any work, then export into ``--out`` and print the parameter counts and the
    largest logit difference between the export and the model on the first ``--n`` images."""
    device = device_of(args)
    output = check_out(args, "export")
    with cli_names({"format": "--format"}):
        check_format(args.format)
    check_counts(args)
    if not args.checkpoint:
        raise CliError("--checkpoint PATH is required: the weights to export (a checkpoint of robustlr train, or a "
                       "state dict of --model/--model-file)")
    data = load_data(args)
    model = load_model(args, data, device)
    check_model_fits(model, data, args, device)
    if not args.dense and not factored_layers(model):
        raise CliError(f"--checkpoint {args.checkpoint} has no low-rank layer, so there are no factors to keep; "
                       "export it multiplied out with --dense, or export a low-rank checkpoint (robustlr train "
                       "--method condlr or lowrank)")
    out = output.create()
    source = {"checkpoint": args.checkpoint, "model": args.model, "model_file": args.model_file,
              "data": args.data, "split": args.split}
    with cli_names({"format": "--format", "batch_size": "--batch-size"}, f"--checkpoint {args.checkpoint}"):
        record = export_model(model, out, data.images.to(device), format=args.format, dense=args.dense,
                              source=source, batch_size=args.batch_size)
    output.finish()
    counts, check = record["parameters"], record["logits_check"]
    print(f"parameters: low-rank {counts['lowrank']:,} (U S Vᵀ, cores included), exported {counts['exported']:,} "
          f"({record['layers']}), dense {counts['dense']:,}")
    print(f"logits: largest difference {check['max_abs_diff']:.3g} between the export and the model on "
          f"{check['images']} images of {args.data} {args.split} (largest |logit| {check['max_abs_logit']:.3g})")
    print(f"export written to {out} ({', '.join([*record['files'], RECORD])})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    text = "a trained model as plain PyTorch (model.py + state_dict.pt, TorchScript or ONNX), loadable without robustlr"
    p = sub.add_parser("export", help=text, description=f"{text}. Each low-rank layer becomes two thin standard "
                       "layers of its rank (--dense: one layer of weight U S Vᵀ); the export is loaded back and its "
                       "logits compared with the model's on the first --n images.")
    add_model_options(p)
    g = p.add_argument_group("export")
    g.add_argument("--format", default="py", choices=list(FORMATS),
                   help="py: model.py (torch only) + state_dict.pt; torchscript: model.ts; onnx: model.onnx (needs "
                        "onnx, onnxscript and onnxruntime) (default: %(default)s)")
    g.add_argument("--dense", action="store_true", help="multiply every low-rank layer out into one dense layer")
    add_data_options(p, n=256)
    r = p.add_argument_group("run")
    r.add_argument("--device", type=device_name, default="cpu",
                   help="torch device this machine has for the check, e.g. cpu, cuda (default: %(default)s)")
    r.add_argument("--out", metavar="DIR",
                   help="output directory (default: a new directory runs/export-<YYYYmmdd-HHMMSS>-<n>)")
    r.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file (same keys), checked like "
                                                         "the command line, which wins")
    p.set_defaults(handler=run, continue_hint=CONTINUE_HINT)
