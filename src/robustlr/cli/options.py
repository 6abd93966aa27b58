"""Shared command-line options and the rules every command's options follow.

* :class:`Parser`: the ``argparse`` parser of ``robustlr`` and of each command. A usage error is raised as
  :class:`UsageError` (one line, exit code 2, naming the option as typed: ``--batch-size must be an integer >= 1;
  got 0``), and an unknown option is reported by the command it was given to (``robustlr evaluate --help``).
* Option types (:func:`integer`, :func:`number`, :func:`unit_interval`, :func:`rank_value`, :func:`device_name`,
  :func:`parse_floats`, :func:`parse_ranks`, :func:`checked`): each value is validated by :mod:`robustlr.checks`
  under its option's name while the command line is parsed, before the library sees it.
* :func:`apply_config`: ``--config file.toml`` values go through the same option types, arities and choices
  (the command line wins).
* :func:`interruption`: the one line and exit code of a command stopped by Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import tomllib
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ..attacks import ATTACK_NAMES
from ..attacks.projections import NORMS, check_rank_spec
from ..checks import check_device, check_int, check_number, is_real
from ..evaluation.suites import SUITES
from ..train import TrainingInterrupted

__all__ = ["add_model_options", "add_data_options", "add_attack_options", "add_suite_options", "add_run_options",
           "apply_config",
           "checked", "device_name", "integer", "number", "parse_floats", "parse_ranks", "rank_value",
           "unit_interval", "default_out", "options_record", "interruption", "CliError", "UsageError", "Parser",
           "DEFAULT_CONTINUE_HINT"]

T = TypeVar("T")

DEFAULT_CONTINUE_HINT = "rerun the command"
"""How to continue after Ctrl-C for a command that sets no ``continue_hint`` default of its own."""


class CliError(ValueError):
    """A usage error reported as one line with exit code 2."""


class UsageError(CliError):
    """An error of the command line itself (unknown option, bad value, missing argument), raised by
    :class:`Parser`. ``option`` is the option it concerns (``None`` if none), ``reason`` what is wrong with it,
    ``prog`` the command (``robustlr evaluate``) whose ``--help`` lists what is allowed."""

    def __init__(self, option: str | None, reason: str, prog: str) -> None:
        self.option, self.reason, self.prog = option, reason, prog
        if option is None:
            detail = reason
        else:
            detail = f"{option} {reason}" if reason.startswith("must ") else f"{option}: {reason}"
        super().__init__(f"{detail} (see '{prog} --help')")


_ARGUMENT = re.compile(r"argument ([^:]+): (.*)", re.S)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are raised as :class:`UsageError` (``main`` prints them as
    one line and returns 2) instead of printing the usage and exiting, and whose unknown options are
    reported by the command they were given to. Subparsers made by :meth:`add_subparsers` are ``Parser`` too."""

    def error(self, message: str) -> NoReturn:
        match = _ARGUMENT.fullmatch(message)
        if match:
            raise UsageError(match.group(1), match.group(2), self.prog)
        raise UsageError(None, message, self.prog)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command_parser(self, parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command named in ``args`` (``parser`` itself if it has no commands or none was named)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return action.choices[name]
    return parser


# ------------------------------------------------------------------------------------------------ option types
def _number_text(text: str) -> object:
    """``"3"`` → 3, ``"0.5"`` → 0.5, anything else stays text (for the check to report)."""
    stripped = text.strip()
    try:
        return int(stripped) if re.fullmatch(r"[+-]?\d+", stripped) else float(stripped)
    except ValueError:
        return text


def checked(check: Callable[[Any], T], name: str = "", convert: Callable[[str], object] = _number_text,
            label: str = "value") -> Callable[[str], T]:
    """An argparse ``type=``: ``check(convert(text))``. A ``ValueError`` of the check becomes the option's
    usage error, without the check's own argument ``name`` (library checks are called with ``""`` or with
    the name they print), so the message names the option: ``--tau must be a finite number >= 0 …; got -1``."""

    def parse(text: str) -> T:
        try:
            return check(convert(text))
        except ValueError as error:
            message = str(error).strip()
            if name and message.startswith(f"{name} "):
                message = message[len(name) + 1:]
            raise argparse.ArgumentTypeError(message) from None

    parse.__name__ = label
    return parse


def integer(minimum: int, reason: str = "") -> Callable[[str], int]:
    """``type=`` of an integer ``>= minimum`` (:func:`robustlr.checks.check_int`; ``reason`` explains the bound)."""
    return checked(lambda value: check_int("", value, minimum, reason), label="integer")


def number(minimum: float = 0.0, strict: bool = False) -> Callable[[str], float]:
    """``type=`` of a finite number ``>= minimum`` (``> minimum`` if ``strict``;
    :func:`robustlr.checks.check_number`)."""
    return checked(lambda value: check_number("", value, minimum, strict), label="number")


def unit_interval(low_open: bool = False, high_open: bool = False, reason: str = "") -> Callable[[str], float]:
    """``type=`` of a number in the unit interval, ``[0, 1]`` or with either end open (``(0, 1)`` …)."""
    shown = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    because = f" ({reason})" if reason else ""

    def check(value: object) -> float:
        inside = is_real(value) and (0 < value if low_open else 0 <= value) and (  # type: ignore[operator]
            value < 1 if high_open else value <= 1)  # type: ignore[operator]
        if not inside:
            raise ValueError(f"must be a number in {shown}{because}; got {value!r}")
        return float(value)  # type: ignore[arg-type]

    return checked(check, label="fraction")


rank_value: Callable[[str], int | float] = checked(lambda value: check_rank_spec(value, ""), label="rank")
"""``type=`` of one rank: an int >= 1 (``"3"`` → 3) or a fraction in (0, 1] (``"0.2"`` → 0.2); see
:func:`robustlr.attacks.projections.check_rank_spec`."""


def _device(text: str) -> str:
    check_device("", text)
    return text


device_name: Callable[[str], str] = checked(_device, convert=str, label="device")
"""``type=`` of ``--device``: the text, if it names a device this machine has (:func:`robustlr.checks.check_device`)."""


def _split(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def _each(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    """``type=`` of a list (commas or spaces) whose every element is ``parse``'s."""

    def parse_list(text: str) -> list[T]:
        return [parse(part) for part in _split(text)]

    return parse_list


parse_floats: Callable[[str], list[float]] = _each(number(0.0))
"""``"0,0.1 0.2"`` → ``[0.0, 0.1, 0.2]``; each value a finite number ≥ 0."""

parse_ranks: Callable[[str], list[int | float]] = _each(rank_value)
"""``"3,0.2"`` → ``[3, 0.2]``: an int ≥ 1 is a rank, a number in (0, 1] with a point is a fraction."""


class _Collect(argparse.Action):
    """Collect the values of every occurrence (``--eps 0 0.1 --eps 0.2``, ``--eps 0,0.1,0.2``, ``--attack a
    --attack b``); the first occurrence replaces the default, also one set by ``--config``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        current = [] if current is None or current is self.default else list(current)
        for value in values if isinstance(values, list) else [values]:
            current.extend(value if isinstance(value, list) else [value])
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
    g.add_argument("--data", default="fashion-mnist",
                   help="dataset name; folder: your image folder (DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg), "
                        "file: your .npz/.pt tensor file, both at --data-root (default: %(default)s)")
    g.add_argument("--data-root", metavar="DIR", help="the only directory looked in for the dataset files (default: "
                                                     "$ROBUSTLR_DATA, ~/.cache/robustlr, /usr/share/datasets); the "
                                                     "folder's root for --data folder, the file for --data file")
    g.add_argument("--image-size", type=integer(1), metavar="N",
                   help="--data folder: resize every image (shorter side round(N*256/224), centre crop N); default: "
                        "images keep their size, which must be the same for all")
    g.add_argument("--workers", type=integer(0, "0 = the main process"), metavar="N",
                   help="processes that load (decode) batches in parallel (default: min(4, CPUs) for --data folder, "
                        "0 for data held in memory)")
    g.add_argument("--download", action="store_true", help="download (checksum-verified) if not found locally")
    g.add_argument("--split", default=split, choices=["train", "test"], help="default: %(default)s")
    g.add_argument("--n", type=integer(0, "0 = all"), default=n,
                   help="number of images (default: %(default)s; 0 = all)")
    g.add_argument("--batch-size", type=integer(1), default=256, help="default: %(default)s")


def add_attack_options(p: argparse.ArgumentParser, attacks: list[str]) -> None:
    g = p.add_argument_group("attacks")
    g.add_argument("--attack", action=_Collect, choices=ATTACK_NAMES, default=None,
                   help=f"repeatable; default: {' '.join(attacks)}")
    g.add_argument("--eps", type=parse_floats, nargs="+", action=_Collect, default=None,
                   help="budgets for every attack (list; commas or spaces); default per norm, see --eps-linf/--eps-l2")
    g.add_argument("--eps-linf", type=parse_floats, nargs="+", action=_Collect, default=None,
                   help="budgets for the L∞ attacks (overrides --eps for them)")
    g.add_argument("--eps-l2", type=parse_floats, nargs="+", action=_Collect, default=None,
                   help="budgets for the L2 attacks (overrides --eps for them)")
    g.add_argument("--rank", type=parse_ranks, nargs="+", action=_Collect, default=None,
                   help="ranks of the low-rank attacks: ints or fractions of min(H, W) (default: 0.1 0.3 0.5)")
    g.add_argument("--steps", type=integer(1), default=argparse.SUPPRESS,  # absent: each attack's own default
                   help="attack steps (default: 10 for PGD and LoRa-PGD, AutoAttack's 100 for APGD, APGD-T, FAB-T and LoRa-APGD; "
                        "FGSM and Square take none)")
    g.add_argument("--restarts", type=integer(1), default=1,
                   help="attack restarts, best per sample; APGD-T and FAB-T: per target class (default: %(default)s)")
    g.add_argument("--queries", type=integer(1), default=None,
                   help="queries of the Square attack (default: AutoAttack's 5000)")
    p.set_defaults(default_attacks=attacks)


def add_suite_options(p: argparse.ArgumentParser) -> None:
    """``--suite --norm --cascade`` (:mod:`robustlr.cli.plan` says how they combine with ``--attack``)."""
    g = p.add_argument_group("suites")
    g.add_argument("--suite", choices=list(SUITES), default=None,
                   help="autoattack: APGD-CE, APGD-T, FAB-T, Square (AutoAttack's standard version); fast: PGD, "
                        "LoRa-PGD, APGD-CE; at every budget of the norm, as a cascade; --attack attacks run after it "
                        "(default: none, the --attack attacks alone)")
    g.add_argument("--norm", action=_Collect, choices=list(NORMS), default=None,
                   help="threat model(s) of --suite, repeatable (default: linf)")
    g.add_argument("--cascade", action="store_true",
                   help="a speed option: the attacks of each (ε, norm) run in order, each only on the points still "
                        "robust; the worst case is the same (a suite always runs as a cascade)")


def add_run_options(p: argparse.ArgumentParser, command: str, out_default: str | None = None) -> None:
    """``--seed --device --out --no-progress --config``; ``out_default`` describes the output directory used
    without ``--out`` (default: a new ``runs/<command>-<YYYYmmdd-HHMMSS>-<n>``, see :func:`default_out`)."""
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=integer(0), default=0, help="seed of every random draw (default: %(default)s)")
    g.add_argument("--device", type=device_name, default="cpu",
                   help="torch device this machine has, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    new = f"a new directory runs/{command}-<YYYYmmdd-HHMMSS>-<n>"
    g.add_argument("--out", metavar="DIR", help=f"output directory (default: {out_default or new})")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--config", metavar="FILE.toml",
                   help="read options from a TOML file (same keys, e.g. eps = [0.1], attack = ['pgd-l2'], "
                        "no-progress = true), checked like the command line, which wins")


def options_record(args: argparse.Namespace) -> dict:
    """The parsed options as a JSON-ready dict (what a report records of the command that made it)."""
    return {k: v for k, v in vars(args).items() if k not in ("handler", "default_attacks", "continue_hint")}


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
    """Parse ``argv``; if it names ``--config FILE``, the file's keys become defaults and ``argv`` is parsed again
    (the command line wins).

    Each key is an option of the command (``batch-size`` or ``batch_size`` for ``--batch-size``) and its value
    goes through that option's own type, arity and choices, as the command line's would (:func:`_config_tokens`):
    a flag takes ``true`` / ``false``, a list option a list (or one value), any other option one string or
    number (a table ``{a = 1}`` is the text ``a=1``, e.g. train's ``rank``). An unknown key or a bad value is
    a :class:`CliError` ``--config FILE: key 'n': ...`` naming the key and what is allowed.
    """
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return args
    config = _read_toml(path)
    target = command_parser(parser, args)
    actions = {a.dest: a for a in target._actions if a.option_strings and a.dest not in ("help", "config")}
    values = {}
    for key, value in config.items():
        action = actions.get(key.replace("-", "_"))
        if action is None:
            allowed = ", ".join(sorted(a.option_strings[-1].lstrip("-") for a in actions.values()))
            raise CliError(f"--config {path}: unknown key {key!r}; allowed: {allowed}")
        try:
            parsed, _ = target.parse_known_args(_config_tokens(action, value), argparse.Namespace())
        except UsageError as exc:
            raise CliError(f"--config {path}: key {key!r}: {exc.reason}") from None
        except ValueError as exc:
            raise CliError(f"--config {path}: key {key!r}: {exc}") from None
        values[action.dest] = getattr(parsed, action.dest)
    target.set_defaults(**values)
    return parser.parse_args(argv)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise CliError(f"--config {path}: cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"--config {path}: not valid TOML ({exc})") from None


def _shown(value: object) -> str:
    """A TOML value as the file spells it (``true``, ``"yes"``, ``[1, 2]``)."""
    return json.dumps(value, default=str)


def _token(value: object) -> str:
    """One command-line word of a TOML string or number; anything else is refused."""
    if isinstance(value, str):
        return value
    if is_real(value):
        return str(value)
    raise ValueError(f"must be a string or a number; got {_shown(value)}")


def _config_tokens(action: argparse.Action, value: object) -> list[str]:
    """The command-line words that give ``action`` the TOML ``value`` (``ValueError`` if it cannot)."""
    option = action.option_strings[-1]
    if action.nargs == 0:  # a flag
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false; got {_shown(value)}")
        return [option] if value == action.const else []
    repeated = isinstance(action, (argparse._AppendAction, _Collect)) and action.nargs is None
    if action.nargs in ("+", "*") or isinstance(action.nargs, int) or repeated:
        items = value if isinstance(value, list) else [value]
        try:
            words = [_token(item) for item in items]
        except ValueError:
            raise ValueError(f"must be a list of strings or numbers (or one); got {_shown(value)}") from None
        return [f"{option}={word}" for word in words] if repeated else [option, *words]
    if isinstance(value, list):
        raise ValueError(f"takes one value, not a list; got {_shown(value)}")
    if isinstance(value, dict):  # NAME=VALUE pairs, e.g. train's rank = {"features.0" = 3}
        try:
            return [f"{option}={','.join(f'{name}={_token(item)}' for name, item in value.items())}"]
        except ValueError:
            raise ValueError(f"must be a string, a number or a table of them; got {_shown(value)}") from None
    return [f"{option}={_token(value)}"]


def interruption(stop: BaseException, hint: str | None) -> tuple[str, int]:
    """The line to print and the exit code after ``stop`` (``KeyboardInterrupt``, or
    :class:`robustlr.train.TrainingInterrupted` raised once training saved its state on SIGINT/SIGTERM) ended a
    command: ``robustlr: interrupted (<what the exception says was saved>); to continue: <hint>`` and
    128 + the signal's number (130 for Ctrl-C). ``hint`` is the command's ``continue_hint`` default (how to
    continue *that* command; :data:`DEFAULT_CONTINUE_HINT` if it has none)."""
    signum = stop.signum if isinstance(stop, TrainingInterrupted) else signal.SIGINT
    saved = " ".join(str(stop).split())
    detail = f" ({saved})" if saved else ""
    return f"robustlr: interrupted{detail}; to continue: {hint or DEFAULT_CONTINUE_HINT}", 128 + int(signum)
