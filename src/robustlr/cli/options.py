"""Shared command-line options, list parsing and ``--config file.toml`` merging (command line wins)."""

from __future__ import annotations

import argparse
import itertools
import math
import tomllib
from datetime import datetime
from pathlib import Path

from ..attacks import ATTACK_NAMES

__all__ = ["add_model_options", "add_data_options", "add_attack_options", "add_run_options", "apply_config",
           "parse_floats", "parse_ranks", "default_out", "options_record", "CliError"]


class CliError(ValueError):
    """A usage error reported as one line with exit code 2."""


def _split(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def parse_floats(text: str) -> list[float]:
    """``"0,0.1 0.2"`` → ``[0.0, 0.1, 0.2]``; each value finite and ≥ 0."""
    values = []
    for part in _split(text):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{part!r} must be a finite number >= 0")
        values.append(value)
    return values


def parse_ranks(text: str) -> list[int | float]:
    """``"3,0.2"`` → ``[3, 0.2]``: an int ≥ 1 is a rank, a number in (0, 1] with a point is a fraction."""
    ranks: list[int | float] = []
    for part in _split(text):
        try:
            value: int | float = int(part) if part.lstrip("+").isdigit() else float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a rank (an int >= 1 or a fraction in (0, 1])") from None
        if isinstance(value, int) and value < 1 or isinstance(value, float) and not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not a rank (an int >= 1 or a fraction in (0, 1])")
        ranks.append(value)
    return ranks


class _Extend(argparse.Action):
    """Append the values of every occurrence (``--eps 0 0.1 --eps 0.2`` or ``--eps 0,0.1,0.2``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        current = [] if current is None or current is self.default else list(current)
        for value in values:
            current.extend(value)
        setattr(namespace, self.dest, current)


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="model name from robustlr.models (e.g. lenet5, vgg16, wrn-16-4); "
                                   "built for the data's channels, size and classes")
    g.add_argument("--model-file", metavar="PATH.py:FACTORY", help="your own model: FACTORY() in PATH.py")
    g.add_argument("--checkpoint", metavar="PATH", help="a state_dict saved by robustlr (with its .json sidecar) "
                                                        "or any state_dict matching --model/--model-file")


def add_data_options(p: argparse.ArgumentParser, split: str = "test", n: int | None = 1000) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", help="dataset name (default: %(default)s)")
    g.add_argument("--data-root", metavar="DIR", help="directory holding the dataset files (searched first)")
    g.add_argument("--download", action="store_true", help="download (checksum-verified) if not found locally")
    g.add_argument("--split", default=split, choices=["train", "test"], help="default: %(default)s")
    g.add_argument("--n", type=int, default=n, help="number of images (default: %(default)s; 0 = all)")
    g.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")


def add_attack_options(p: argparse.ArgumentParser, attacks: list[str]) -> None:
    g = p.add_argument_group("attacks")
    g.add_argument("--attack", action="append", choices=ATTACK_NAMES, default=None,
                   help=f"repeatable; default: {' '.join(attacks)}")
    g.add_argument("--eps", type=parse_floats, nargs="+", action=_Extend, default=None,
                   help="budgets for every attack (list; commas or spaces); default per norm, see --eps-linf/--eps-l2")
    g.add_argument("--eps-linf", type=parse_floats, nargs="+", action=_Extend, default=None,
                   help="budgets for the L∞ attacks (overrides --eps for them)")
    g.add_argument("--eps-l2", type=parse_floats, nargs="+", action=_Extend, default=None,
                   help="budgets for the L2 attacks (overrides --eps for them)")
    g.add_argument("--rank", type=parse_ranks, nargs="+", action=_Extend, default=None,
                   help="ranks of the low-rank attacks: ints or fractions of min(H, W) (default: 0.1 0.3 0.5)")
    g.add_argument("--steps", type=int, default=10, help="attack steps (default: %(default)s)")
    g.add_argument("--restarts", type=int, default=1, help="attack restarts, best per sample (default: %(default)s)")
    p.set_defaults(default_attacks=attacks)


def add_run_options(p: argparse.ArgumentParser, command: str, out_default: str | None = None) -> None:
    """``--seed --device --out --no-progress --config``; ``out_default`` is the output directory used without
    ``--out`` (default: ``runs/<command>-<timestamp>``)."""
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    g.add_argument("--out", metavar="DIR",
                   help=f"output directory (default: {out_default or f'runs/{command}-<timestamp>'})")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file (same keys, e.g. "
                                                         "eps = [0.1], attack = ['pgd-l2']); the command line wins")


def options_record(args: argparse.Namespace) -> dict:
    """The parsed options as a JSON-ready dict (what a report records of the command that made it)."""
    return {k: v for k, v in vars(args).items() if k not in ("handler", "default_attacks")}


def default_out(command: str, parent: Path = Path("runs")) -> Path:
    """A new, empty output directory ``runs/<command>-<YYYYmmdd-HHMMSS>-<n>``, created here so that two
    commands started in the same second never share one (``mkdir`` without ``exist_ok`` is the arbiter)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = parent / f"{command}-{stamp}-{n}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")  # pragma: no cover


def apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; if it names ``--config``, use the file's keys as defaults and parse again."""
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return args
    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except OSError as exc:
        raise CliError(f"--config {path}: cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"--config {path}: not valid TOML ({exc})") from None
    command = getattr(args, "command", None)
    if command is not None:  # options live on the command's own parser
        choices = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        target = choices[command]
    else:
        target = parser
    known = {a.dest for a in target._actions}
    listed = {a.dest for a in target._actions if a.nargs in ("+", "*")}
    values = {}
    for key, value in config.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in ("config", "help"):
            raise CliError(f"--config {path}: unknown key {key!r}; allowed: {', '.join(sorted(known - {'help', 'config'}))}")
        values[dest] = (value if isinstance(value, list) else [value]) if dest in listed else value
    target.set_defaults(**values)
    return parser.parse_args(argv)
