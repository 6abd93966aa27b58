"""``--config FILE.toml``: every value goes through its option's own type, arity and choices, like the command
line; a bad value is one line naming the key; the command line wins."""

from __future__ import annotations

import pytest

from robustlr.cli import build_parser, main
from robustlr.cli.options import CliError, apply_config


def _parse(tmp_path, command: list[str], toml: str, *argv: str):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    return apply_config(build_parser(), [*command, "--config", str(path), *argv])


@pytest.mark.parametrize(("command", "toml", "needles"), [
    (["evaluate"], "n = 1.5\n", ["key 'n'", "integer >= 0", "1.5"]),
    (["evaluate"], "n = true\n", ["key 'n'", "string or a number", "true"]),
    (["evaluate"], "n = [1, 2]\n", ["key 'n'", "one value", "[1, 2]"]),
    (["evaluate"], "n = {a = 1}\n", ["key 'n'", "integer", "a=1"]),
    (["evaluate"], "batch-size = 0\n", ["key 'batch-size'", "integer >= 1", "got 0"]),
    (["evaluate"], "steps = -3\n", ["key 'steps'", "integer >= 1", "-3"]),
    (["evaluate"], "attack = ['fgsm', 'nope']\n", ["key 'attack'", "invalid choice", "'nope'", "'pgd-l2'"]),
    (["evaluate"], "attack = 'fgs'\n", ["key 'attack'", "invalid choice", "'fgs'"]),
    (["evaluate"], "eps = [0.1, -1]\n", ["key 'eps'", ">= 0", "-1"]),
    (["evaluate"], "eps = [true]\n", ["key 'eps'", "list of strings or numbers", "[true]"]),
    (["evaluate"], "rank = 1.5\n", ["key 'rank'", "fraction in (0, 1]", "1.5"]),
    (["evaluate"], "no-progress = 'yes'\n", ["key 'no-progress'", "true or false", '"yes"']),
    (["evaluate"], "device = 'meta'\n", ["key 'device'", "this machine has", "'meta'"]),
    (["demo"], "quick = 'yes'\n", ["key 'quick'", "true or false", '"yes"']),
    (["demo"], "quick = 1\n", ["key 'quick'", "true or false", "1"]),
    (["train"], "epochs = 0\n", ["key 'epochs'", "integer >= 1", "got 0"]),
    (["train"], "val_fraction = 1\n", ["key 'val_fraction'", "(0, 1)", "got 1"]),
    (["train"], "adv = 'cw'\n", ["key 'adv'", "invalid choice", "'cw'"]),
    (["train"], "milestones = [3, 'x']\n", ["key 'milestones'", "integer >= 1", "'x'"]),
    (["train"], "rank = {\"features.0\" = 0}\n", ["key 'rank'", "features.0", "(0, 1]"]),
])
def test_a_bad_value_is_refused_naming_the_key(command, toml, needles, tmp_path):
    with pytest.raises(CliError) as caught:
        _parse(tmp_path, command, toml)
    message = str(caught.value)
    assert message.startswith(f"--config {tmp_path / 'run.toml'}: "), message
    for needle in needles:
        assert needle in message, message


def test_values_are_those_of_the_same_words_on_the_command_line(tmp_path):
    args = _parse(tmp_path, ["evaluate"], "attack = 'fgsm'\nout = 5\nn = 7\neps = '0.1, 0.2'\nrank = [3, 0.2]\n"
                                          "no-progress = true\ndownload = false\nseed = 3\n")
    assert args.attack == ["fgsm"]  # one attack, not the letters f, g, s, m
    assert (args.out, args.n, args.eps, args.rank) == ("5", 7, [0.1, 0.2], [3, 0.2])
    assert (args.no_progress, args.download, args.seed) == (True, False, 3)
    train = _parse(tmp_path, ["train"], "milestones = 5\neval-eps = [0, 0.1]\ntau = 0\nadv-rank = 3\n")
    assert (train.milestones, train.eval_eps, train.tau, train.adv_rank) == ([5], [0.0, 0.1], 0.0, 3)


def test_the_command_line_wins_also_for_repeatable_options(tmp_path):
    toml = "attack = ['fgsm', 'pgd-l2']\neps = [0.5]\nn = 16\nno-progress = true\n"
    args = _parse(tmp_path, ["evaluate"], toml, "--attack", "pgd-linf", "--eps", "0.1", "--n", "8")
    assert (args.attack, args.eps, args.n, args.no_progress) == (["pgd-linf"], [0.1], 8, True)
    args = _parse(tmp_path, ["evaluate"], toml, "--attack", "pgd-linf", "--attack", "fgsm")
    assert args.attack == ["pgd-linf", "fgsm"]


def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("n = 1.5\n")
    out = tmp_path / "out"
    assert main(["evaluate", "--config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustlr: error: --config ") and "key 'n'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    path.write_text("colour = 'red'\n")
    assert main(["evaluate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'colour'" in err and "batch-size" in err and len(err.strip().splitlines()) == 1
