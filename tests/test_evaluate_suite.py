"""The AutoAttack-grade evaluation: the cascade, the suites, the sanity flags, the standard table and the CLI.

The models are small MLPs trained in the test on 8×8 images of ten noisy prototypes (and two Gaussian blobs);
the ``autoattack`` suite is checked against the original AutoAttack (pyautoattack) on the same model and points.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings

import pytest
import torch
from conftest import cli_error, require
from torch import nn

from robustlr.attacks import FGSM, PGD, APGD, APGDT, LoRaPGD, build_attack
from robustlr.attacks.fab import FAB
from robustlr.attacks.registry import AUTOATTACK_ATTACKS, attack_norm, normed_name
from robustlr.attacks.square import Square
from robustlr.cli import main
from robustlr.evaluate import RobustnessWarning, at_eps, evaluate
from robustlr.evaluation.suites import suite_attacks, suite_names
from robustlr.profiling import HostSyncs
from robustlr.report import CASCADE_FILES, FILES, write_report

SIDE = 8


def prototypes(n: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images: one of ``classes`` fixed random prototypes each, plus Gaussian noise (σ = 0.25), clipped."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=gen)
    protos = torch.rand(classes, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(99))
    return (protos[y] + 0.25 * torch.randn(n, 1, SIDE, SIDE, generator=gen)).clamp(0, 1), y


def trained_mlp(classes: int = 10, steps: int = 200) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 32), nn.ReLU(), nn.Linear(32, classes))
    x, y = prototypes(1000, 1, classes)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_mlp()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return prototypes(48, 2)


def quiet(*args, **kwargs):
    """``evaluate`` with the progress bar off and its RobustnessWarnings recorded rather than shown (the tests
    read them from ``result.warnings``)."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        return evaluate(*args, progress=False, **kwargs)


# --------------------------------------------------------------------------------------------- the cascade
EPS = [0.0, 0.1, 0.2]


def disagreeing_attacks(model: nn.Module) -> dict:
    """Attacks of different strength and objective at every ε, in two norms, and a ready attack without a budget."""
    return {
        "fgsm": at_eps(lambda e: FGSM(model, e, "linf")),
        "pgd": at_eps(lambda e: PGD(model, e, "linf", steps=3, seed=0)),
        "pgd-margin": at_eps(lambda e: PGD(model, e, "linf", steps=6, loss="margin", seed=1)),
        "pgd-l2": at_eps(lambda e: PGD(model, e, "l2", steps=3, seed=0)),
        "identity": lambda x, y: x,
    }


@pytest.fixture(scope="module")
def both(model, data):
    plain = quiet(model, data, disagreeing_attacks(model), EPS, batch_size=16, sanity=False)
    cascaded = quiet(model, data, disagreeing_attacks(model), EPS, batch_size=16, sanity=False, cascade=True)
    return plain, cascaded


def test_the_cascade_has_the_worst_case_of_every_attack_on_every_point(both):
    plain, cascaded = both
    assert not plain.cascade and cascaded.cascade
    def groups(result):
        return [(w.eps, w.norm, w.attacks) for w in result.worst_case]

    assert groups(plain) == groups(cascaded)
    for mine, theirs in zip(cascaded.worst_case, plain.worst_case):
        assert torch.equal(mine.robust, theirs.robust) and mine.robust_accuracy == theirs.robust_accuracy
    assert torch.equal(plain.clean_correct, cascaded.clean_correct)
    # the attacks disagree: at ε = 0.1 the later L∞ attacks break points that FGSM leaves
    at = {r.attack: r for r in plain.attacks if r.eps == 0.1}
    assert plain.worst_at(0.1, "linf").robust_accuracy < at["fgsm"].robust_accuracy


def test_each_stage_attacks_only_the_points_still_robust(both):
    plain, cascaded = both
    for eps in EPS:
        for norm, names in (("linf", ["fgsm", "pgd", "pgd-margin"]), ("l2", ["pgd-l2"])):
            alive = cascaded.clean_correct.clone()
            for stage, name in enumerate(names, start=1):
                mine = next(r for r in cascaded.attacks if r.attack == name and r.eps == eps)
                theirs = next(r for r in plain.attacks if r.attack == name and r.eps == eps)
                assert mine.stage == stage and theirs.stage is None and theirs.attacked == plain.n
                assert mine.attacked == int(alive.sum())  # exactly the points no earlier stage broke
                alive &= theirs.robust
                assert torch.equal(mine.robust, alive)  # robust after the stage = worst case of the stages so far
                assert mine.robust_accuracy == alive.sum().item() / plain.n
    stages = {(r.eps, r.attack): r.attacked for r in cascaded.attacks if r.stage}
    assert stages[(0.2, "pgd-margin")] < stages[(0.2, "pgd")] < stages[(0.2, "fgsm")]  # later attacks see fewer
    identity = next(r for r in cascaded.attacks if r.attack == "identity")
    assert identity.stage is None and identity.attacked == cascaded.n  # no budget: no group, not cascaded


def test_stage_rows_and_to_dict_report_the_cascade(both):
    plain, cascaded = both
    assert plain.stage_rows() == [] and plain.to_dict()["stages"] == []
    rows = cascaded.stage_rows()
    assert [(r["eps"], r["norm"], r["stage"], r["attack"]) for r in rows[:5]] == [
        (0.0, "linf", 1, "fgsm"), (0.0, "linf", 2, "pgd"), (0.0, "linf", 3, "pgd-margin"), (0.0, "l2", 1, "pgd-l2"),
        (0.1, "linf", 1, "fgsm")]
    doc = json.loads(json.dumps(cascaded.to_dict()))
    assert doc["cascade"] is True and doc["stages"] == rows
    assert {a["attack"]: a["stage"] for a in doc["attacks"] if a["eps"] == 0.2} == {
        "fgsm": 1, "pgd": 2, "pgd-margin": 3, "pgd-l2": 1}
    standard = {(r["eps"], r["norm"]): r for r in cascaded.standard_rows()}
    assert standard[(0.2, "linf")]["robust_accuracy"] == cascaded.worst_at(0.2, "linf").robust_accuracy
    assert standard[(0.2, "linf")]["attacks"] == "fgsm, pgd, pgd-margin"
    assert standard[(0.2, "linf")]["n"] == 48 and standard[(0.2, "linf")]["clean_accuracy"] == cascaded.clean_accuracy


class _Shift:
    """A ready-made L∞ "attack" that reads nothing from the device: only the evaluation's round trips count."""

    norm = "linf"

    def __init__(self, eps: float, sign: int) -> None:
        self.eps, self.sign = eps, sign

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + self.sign * self.eps).clamp(0, 1)


def _syncs(batches: int, cascade: bool) -> int:
    model = trained_mlp(steps=1)
    x, y = prototypes(8 * batches, 3)
    attacks = {f"shift{i}": at_eps(lambda e, i=i: _Shift(e, (-1) ** i)) for i in range(3)}
    with HostSyncs() as syncs:
        quiet(model, (x, y), attacks, [0.1, 0.3], batch_size=8, cascade=cascade)
    return syncs.total


def test_the_cascade_reads_the_host_once_per_batch_and_once_per_later_stage():
    plain = [_syncs(b, False) for b in (1, 4)]
    cascaded = [_syncs(b, True) for b in (1, 4)]
    assert plain[1] - plain[0] == 3 and cascaded[1] - cascaded[0] == 3, (plain, cascaded)  # 1 per batch
    assert cascaded[0] - plain[0] == 2, (plain, cascaded)  # + the deepest stage's lag (3 stages: 2 more reads)


class _Spy:
    """Counts its calls and returns the images unchanged (declares L∞ budget ``eps``)."""

    norm = "linf"

    def __init__(self, eps: float) -> None:
        self.eps, self.calls = eps, 0

    def __call__(self, x, y):
        self.calls += 1
        return x


def test_a_stage_with_no_point_left_is_not_called(model, data):
    spy = _Spy(0.5)
    result = quiet(model, data, {"pgd": at_eps(lambda e: PGD(model, e, "linf", steps=5, seed=0)),
                                 "spy": at_eps(lambda e: spy)}, [0.5], cascade=True, sanity=False)
    spied = next(r for r in result.attacks if r.attack == "spy")
    assert result.worst_case[0].robust_accuracy == 0 and spied.attacked == 0 and spy.calls == 0
    assert spied.to_dict()["mean_l2"] is None and math.isnan(spied.mean_linf)  # a mean over no point


class _Indexed(nn.Module):
    """Class 1 when pixel (0, 0) exceeds 0.7, else class 0; pixel (1, 1) holds the image's index / 10."""

    def forward(self, x):
        v = x[:, 0, 0, 0]
        return torch.stack([0.7 - v, v - 0.7], dim=1) * 10


class _BreakFirstTwo:
    """Breaks the images of index < 2 (pixel (0, 0) to 0.8), leaves the others."""

    norm, eps = "linf", 0.3

    def __call__(self, x, y):
        out = x.clone()
        out[x[:, 0, 1, 1] < 0.15, 0, 0, 0] = 0.8
        return out


class _OverBudgetOnSeven:
    """Exceeds its L∞ budget 0.3 on the image of index 7 only."""

    norm, eps = "linf", 0.3

    def __call__(self, x, y):
        out = x.clone()
        out[(x[:, 0, 1, 1] - 0.7).abs() < 0.01, 0, 2, 2] += 0.45
        return out


def test_a_bad_result_of_a_later_stage_names_its_sample_by_its_place_in_the_batch():
    x = torch.full((8, 1, 4, 4), 0.5)
    x[:, 0, 1, 1] = torch.arange(8) / 10
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"attacks\['over'\] at eps=0.3 must keep every perturbation within its "
                                         r"budget.*got 0\.45 for sample 7 of batch 1"):
        quiet(_Indexed(), (x, y), {"break": _BreakFirstTwo(), "over": _OverBudgetOnSeven()}, cascade=True, sanity=False)


# ---------------------------------------------------------------------------------------------- the suites
def test_registry_names_autoattack_in_both_norms_with_its_standard_defaults():
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    for name in AUTOATTACK_ATTACKS:
        for norm in ("linf", "l2"):
            assert attack_norm(normed_name(name, norm)) == norm
            assert build_attack(normed_name(name, norm), tiny, 0.1).norm == norm
    ce, dlr = build_attack("apgd-ce-linf", tiny, 0.1), build_attack("apgd-dlr-l2", tiny, 0.5)
    assert type(ce) is APGD and (ce.loss, ce.steps, ce.restarts, ce.rho) == ("ce", 100, 1, 0.75) and dlr.loss == "dlr"
    apgdt = build_attack("apgd-t-linf", tiny, 0.1)
    assert type(apgdt) is APGDT and (apgdt.steps, apgdt.n_target_classes, apgdt.restarts) == (100, 9, 1)
    fab = build_attack("fab-t-l2", tiny, 0.5)
    assert type(fab) is FAB and (fab.targeted, fab.steps, fab.n_target_classes, fab.restarts) == (True, 100, 9, 1)
    square = build_attack("square-linf", tiny, 0.1)
    assert type(square) is Square and (square.queries, square.p_init, square.restarts) == (5000, 0.8, 1)
    assert build_attack("pgd-linf", tiny, 0.1).steps == 10  # the PGD family keeps its 10 steps
    # --steps / --restarts / --queries honoured where they mean something
    assert build_attack("apgd-t-l2", tiny, 0.5, steps=7, restarts=2).steps == 7
    assert build_attack("fab-t-linf", tiny, 0.1, restarts=3).restarts == 3
    assert build_attack("square-l2", tiny, 0.5, steps=7, queries=40).queries == 40
    with pytest.raises(ValueError, match=r"attack 'apgd-ce-linf' takes no queries .*got queries=40"):
        build_attack("apgd-ce-linf", tiny, 0.1, queries=40)
    with pytest.raises(ValueError, match=r"name must be one of AutoAttack's attacks .*got 'pgd'"):
        normed_name("pgd", "linf")


def test_the_autoattack_suite_is_autoattacks_standard_version(model):
    pyautoattack = require("pyautoattack", "the autoattack suite is checked against the original AutoAttack")
    for norm, peer_norm in (("linf", "Linf"), ("l2", "L2")):
        peer = pyautoattack.AutoAttack(model, norm=peer_norm, eps=0.1, version="standard", seed=0)
        assert [normed_name(name, norm) for name in peer.attacks_to_run] == suite_names("autoattack", norm)
        ce, apgdt, fab, square = (spec.factory(0.1) for spec in suite_attacks("autoattack", model, norm).values())
        assert (ce.steps, ce.restarts, ce.rho, ce.loss) == (peer.apgd.n_iter, peer.apgd.n_restarts, peer.apgd.thr_decr,
                                                            "ce")
        assert (apgdt.steps, apgdt.restarts, apgdt.n_target_classes) == (
            peer.apgd_targeted.n_iter, peer.apgd_targeted.n_restarts, peer.apgd_targeted.n_target_classes)
        assert (fab.steps, fab.restarts, fab.n_target_classes, fab.targeted) == (
            peer.fab.n_iter, peer.fab.n_restarts, peer.fab.n_target_classes, True)
        assert (square.queries, square.p_init, square.restarts) == (
            peer.square.n_queries, peer.square.p_init, peer.square.n_restarts)


def test_the_autoattack_suite_agrees_with_pyautoattack(model):
    pyautoattack = require("pyautoattack", "the autoattack suite is checked against the original AutoAttack")
    x, y = prototypes(48, 4)
    ours = quiet(model, (x, y), eps_grid=[0.2], suite="autoattack", norm="linf")
    peer = pyautoattack.AutoAttack(model, norm="Linf", eps=0.2, version="standard", seed=0)
    x_adv, y_adv = peer.run_standard_evaluation(x, y, batch_size=64)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6
    theirs = y_adv == y
    worst = ours.worst_at(0.2)
    assert 0 < worst.robust_accuracy < ours.clean_accuracy  # a number in the middle: the attacks have work
    assert abs(worst.robust_accuracy - theirs.float().mean().item()) <= 2 / 48
    assert int((worst.robust != theirs).sum()) <= 2  # the same points, up to the attacks' randomness
    assert [r["attack"] for r in ours.stage_rows()] == ["apgd-ce-linf", "apgd-t-linf", "fab-t-linf", "square-linf"]


def test_the_fast_suite_and_attacks_appended_after_a_suite(model, data):
    assert suite_names("fast", "l2") == ["pgd-l2", "lora-pgd", "apgd-ce-l2"]
    pgd, lora, apgd = (spec.factory(0.5) for spec in suite_attacks("fast", model, "l2").values())
    assert (type(pgd), pgd.steps, type(lora), lora.rank, type(apgd), apgd.steps) == (PGD, 10, LoRaPGD, 0.1, APGD, 100)
    extra = {"fgsm": at_eps(lambda e: FGSM(model, e, "linf")), "fgm-l2": at_eps(lambda e: FGSM(model, e, "l2"))}
    result = quiet(model, data, extra, [0.5], suite="fast", norm="l2", sanity=False)
    assert result.cascade  # a suite runs as a cascade
    assert [(r["norm"], r["stage"], r["attack"]) for r in result.stage_rows()] == [
        ("l2", 1, "pgd-l2"), ("l2", 2, "lora-pgd r=0.1"), ("l2", 3, "apgd-ce-l2"), ("l2", 4, "fgm-l2"),
        ("linf", 1, "fgsm")]
    assert len(result.notes) == 1 and "--suite autoattack" in result.notes[0]  # gradient attacks only
    plain = quiet(model, data, extra, [0.5], suite="fast", norm="l2", sanity=False, cascade=False)
    assert [w.robust_accuracy for w in plain.worst_case] == [w.robust_accuracy for w in result.worst_case]


@pytest.mark.parametrize("kwargs, match", [
    (dict(suite="autoattak", norm="linf"), r"suite must be one of \('autoattack', 'fast'\) or None, got 'autoattak'"),
    (dict(suite="autoattack"), r"norm must be one of \('linf', 'l2'\) for suite='autoattack' .*got None"),
    (dict(suite="fast", norm="L2"), r"norm must be one of .* got 'L2'"),
    (dict(norm="linf", attacks={"id": lambda x, y: x}, eps_grid=None), "norm is the threat model of a suite"),
    (dict(suite="fast", norm="linf", eps_grid=None), "eps_grid must be given with suite='fast'"),
    (dict(attacks=None, eps_grid=None), "attacks must be given .* or a suite"),
    (dict(suite="fast", norm="linf", attacks={"pgd-linf": lambda x, y: x}),
     r"attacks must not reuse the names of suite='fast' .*got \['pgd-linf'\]"),
    (dict(suite="fast", norm="linf", attacks=[1]), "attacks must be a mapping"),
    (dict(suite="fast", norm="linf", cascade="yes"), "cascade must be True, False or None"),
])
def test_suite_arguments_are_checked(model, data, kwargs, match):
    args = {"attacks": None, "eps_grid": [0.1], **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(model, data, args.pop("attacks"), args.pop("eps_grid"), progress=False, **args)


# ------------------------------------------------------------------------------------------ sanity flags
class _Noisy(nn.Module):
    """Adds fresh noise to its input at every call, in eval mode too (a randomised defence)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.generator = net, torch.Generator().manual_seed(0)

    def forward(self, x):
        return self.net(x + 0.05 * torch.randn(x.shape, generator=self.generator))


def test_a_randomised_model_is_flagged(model, data):
    attacks = {"fgsm": at_eps(lambda e: FGSM(model, e, "linf"))}
    assert not any("randomised" in w for w in quiet(model, data, attacks, [0.1]).warnings)
    noisy = _Noisy(model).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(noisy, data, {"fgsm": at_eps(lambda e: FGSM(noisy, e, "linf"))}, [0.1], progress=False)
    flagged = [w for w in result.warnings if "randomised" in w]
    assert len(flagged) == 1 and re.match(r"model seems randomised: two identical forward passes of the first batch "
                                          r"gave logits \S+ apart \(relative", flagged[0]) and "EOT" in flagged[0]
    assert any(issubclass(c.category, RobustnessWarning) and str(c.message) == flagged[0] for c in caught)


def test_probabilities_are_still_flagged_in_a_cascade(model, data):
    probs = nn.Sequential(model, nn.Softmax(dim=1))
    result = quiet(probs, data, {"fgsm": at_eps(lambda e: FGSM(probs, e, "linf"))}, [0.1], cascade=True)
    assert result.warnings[0].startswith("model seems to output probabilities")


def test_too_few_classes_for_the_targeted_attacks_is_flagged():
    five = trained_mlp(classes=5, steps=20)
    x, y = prototypes(16, 5, classes=5)
    attacks = {"apgd-t": at_eps(lambda e: APGDT(five, e, "linf", steps=2, seed=0)),
               "fab-t": at_eps(lambda e: FAB(five, e, "linf", steps=2, seed=0))}
    result = quiet(five, (x, y), attacks, [0.1], cascade=True)
    for name in ("apgd-t", "fab-t"):
        assert f"'{name}' asks for 9 target classes but the model has only 5 classes: it targets all 4 others" \
            in result.warnings
    ten = trained_mlp(steps=1)
    enough = quiet(ten, prototypes(8, 5), {"fab-t": at_eps(lambda e: FAB(ten, e, "linf", steps=1))}, [0.1])
    assert not any("target classes" in w for w in enough.warnings)  # 10 classes: 9 others
    three = trained_mlp(classes=3, steps=20)
    x3, y3 = prototypes(8, 5, classes=3)
    fab3 = quiet(three, (x3, y3), {"fab-t": at_eps(lambda e: FAB(three, e, "linf", steps=2))}, [0.1])
    assert "'fab-t' asks for 9 target classes but the model has only 3 classes: it targets all 2 others" \
        in fab3.warnings
    with pytest.raises(ValueError, match="APGDT needs a model of at least 4 classes"):
        APGDT(three, 0.1, "linf", steps=2)(x3, y3)


def test_an_attack_not_defined_on_the_model_or_images_is_refused_before_any_attack_runs():
    three = trained_mlp(classes=3, steps=20)
    x, y = prototypes(8, 5, classes=3)
    calls = []

    def spy(e):
        def atk(xb, yb):
            calls.append(e)
            return xb
        return atk

    attacks = {"first": at_eps(spy), "apgd-t": at_eps(lambda e: APGDT(three, e, "linf", steps=2))}
    with pytest.raises(ValueError, match=r"attack 'apgd-t': needs a model of at least 4 classes \(its loss's "
                                         r"denominator uses the 4 largest logits\), the model has 3: leave it out; "
                                         r"APGD-CE, FAB-T and Square need 2 \(for the autoattack suite, give those "
                                         r"attacks yourself: attacks=\.\.\. or robustlr evaluate --attack\)$"):
        quiet(three, (x, y), attacks, [0.1])
    assert calls == []  # refused on the first batch's logits, before any attack
    small, labels = torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    for name, spec in (("square-l2", at_eps(lambda e: Square(tiny, e, "l2", queries=2))),
                       ("lora-pgd", at_eps(lambda e: LoRaPGD(tiny, e, 5, steps=2)))):
        calls.clear()
        with pytest.raises(ValueError) as error:
            quiet(tiny, (small, labels), {"first": at_eps(spy), name: spec}, [0.1])
        assert calls == []
        assert str(error.value) == {
            "square-l2": "attack 'square-l2': x must have images of at least 5×5 for norm='l2' (the start tiles are "
                         "a fifth of the side), got (4, 3, 4, 4): norm='linf' has no minimum",
            "lora-pgd": "attack 'lora-pgd': rank must be an int in [1, 4] or a fraction in (0, 1], got 5"}[name]
    two = trained_mlp(classes=2, steps=20)
    x2, y2 = prototypes(8, 5, classes=2)
    with pytest.raises(ValueError, match="attack 'apgd-dlr': needs a model of at least 3 classes"):
        quiet(two, (x2, y2), {"apgd-dlr": at_eps(lambda e: APGD(two, e, "linf", steps=2, loss="dlr"))}, [0.1])
    with pytest.raises(ValueError, match="attack 'apgd-t-linf': needs a model of at least 4 classes"):
        quiet(three, (x, y), None, [0.1], suite="autoattack", norm="linf")
    allowed = ("apgd-ce-linf", "fab-t-linf", "square-linf")  # what the hint names: losses defined for 2 classes
    short = {name: {"queries": 20} if name.startswith("square") else {"steps": 2} for name in allowed}
    kept = quiet(two, (x2, y2), {name: at_eps(lambda e, name=name: build_attack(name, two, e, **short[name]))
                                 for name in allowed}, [0.1])
    assert {r.attack for r in kept.attacks} == set(allowed)


class _Quantise(nn.Module):
    """Rounds the image to 1/16: the classifier works, its input gradient is zero everywhere (masked)."""

    def forward(self, x):
        return torch.round(x * 16) / 16


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs: class 0 is brighter on the left half of the image, class 1 on the right."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    pattern = torch.ones(1, SIDE, SIDE)
    pattern[..., SIDE // 2:] = -1
    sign = (1 - 2 * y).float()[:, None, None, None]
    x = 0.5 + 0.15 * sign * pattern + 0.1 * torch.randn(n, 1, SIDE, SIDE, generator=gen)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def masked() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 16), nn.ReLU(), nn.Linear(16, 2))
    x, y = blobs(256, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return nn.Sequential(_Quantise(), net).eval()


@pytest.mark.parametrize("cascade", [False, True])
def test_gradient_masking_is_flagged_when_square_breaks_what_pgd_cannot(masked, cascade):
    x, y = blobs(40, 2)
    attacks = {"pgd": at_eps(lambda e: PGD(masked, e, "linf", steps=10, seed=0)),
               "square": at_eps(lambda e: Square(masked, e, "linf", queries=200, seed=0))}
    result = quiet(masked, (x, y), attacks, [0.05, 0.2], cascade=cascade)
    pgd, square = ({r.eps: r for r in result.attacks if r.attack == name} for name in ("pgd", "square"))
    assert result.clean_accuracy == 1 and pgd[0.2].robust_accuracy == 1  # PGD moves nothing: zero gradients
    assert square[0.2].robust_accuracy < 0.5
    flagged = [w for w in result.warnings if w.startswith("gradient masking likely")]
    assert len(flagged) == 1 and flagged[0].startswith("gradient masking likely at ε=0.2 (linf): square broke ")
    assert "report the suite's number (the worst case), not PGD's (1)" in flagged[0]
    assert any("all-zero input gradient" in w for w in result.warnings)
    assert result.notes == []  # Square is gradient-free: no upper-bound note


def test_gradient_attacks_alone_give_an_upper_bound_note_once(model, data, tmp_path):
    grads = {"pgd": at_eps(lambda e: PGD(model, e, "linf", steps=2, seed=0)), "fgsm": FGSM(model, 0.1)}
    result = quiet(model, data, grads, [0.1])
    assert len(result.notes) == 1 and not any("upper bound" in w for w in result.warnings)
    assert result.notes[0].startswith("every attack here follows a loss gradient (pgd, fgsm): the robust accuracy is "
                                      "an upper bound") and "robustlr evaluate --suite autoattack" in result.notes[0]
    assert result.to_dict()["notes"] == result.notes
    assert f"## Notes\n\n- {result.notes[0]}\n" in write_report(result, tmp_path)["markdown"].read_text()
    assert quiet(model, data, {**grads, "id": lambda x, y: x}, [0.1]).notes == []  # an attack of unknown family


# -------------------------------------------------------------------------------------------------- report
def test_the_report_has_the_standard_table_and_with_the_cascade_the_stages(both, tmp_path):
    plain, cascaded = both
    paths = write_report(cascaded, tmp_path / "cascade")
    assert set(paths) == set(FILES) | set(CASCADE_FILES)
    with paths["standard"].open(newline="") as handle:
        standard = list(csv.DictReader(handle))
    assert [(float(r["eps"]), r["norm"], float(r["robust_accuracy"]), r["attacks"], int(r["n"])) for r in standard] == [
        (r["eps"], r["norm"], r["robust_accuracy"], r["attacks"], r["n"]) for r in cascaded.standard_rows()]
    with paths["stages"].open(newline="") as handle:
        stages = list(csv.DictReader(handle))
    assert [(r["attack"], int(r["stage"]), int(r["attacked"])) for r in stages] == [
        (r["attack"], r["stage"], r["attacked"]) for r in cascaded.stage_rows()]
    doc = json.loads(paths["json"].read_text())["result"]
    assert doc["standard"] == json.loads(json.dumps(cascaded.standard_rows())) and doc["stages"][0]["stage"] == 1
    markdown = paths["markdown"].read_text()
    assert "## Standard evaluation\n" in markdown and "### Cascade\n" in markdown
    assert markdown.index("## Standard evaluation") < markdown.index("### Cascade") < markdown.index("## Robust acc")
    assert re.search(r"^\|\s+ε \| norm \|\s+n \| clean acc \| robust acc \| attacks\s+\|\s+seconds \|$", markdown, re.M)
    assert re.search(r"^\|\s+ε \| norm \| stage \| attack\s+\| points attacked \| robust acc after \|", markdown, re.M)
    flat = write_report(plain, tmp_path / "plain")
    assert set(flat) == set(FILES)  # without the cascade: the standard table in result.json and report.md only
    text = flat["markdown"].read_text()
    assert "## Standard evaluation\n" in text and "### Cascade" not in text
    assert json.loads(flat["json"].read_text())["result"]["standard"] == json.loads(json.dumps(plain.standard_rows()))


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fmnist_model):
    """The conftest's small CNN trained on real Fashion-MNIST, as a --model-file and a --checkpoint."""
    from robustlr.models import save_checkpoint

    folder = tmp_path_factory.mktemp("suite-cli")
    (folder / "cnn.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(\n"
        "        nn.Conv2d(1, 8, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),\n"
        "        nn.Conv2d(8, 16, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),\n"
        "        nn.Flatten(), nn.Linear(16 * 7 * 7, 10))\n")
    save_checkpoint(folder / "cnn.pt", fmnist_model, {"data": "fashion-mnist"})
    return ["--model-file", f"{folder / 'cnn.py'}:build", "--checkpoint", str(folder / "cnn.pt")]


def test_cli_suite_autoattack_in_both_norms(checkpoint, tmp_path, capsys):
    out = tmp_path / "aa"
    assert main(["evaluate", *checkpoint, "--suite", "autoattack", "--norm", "linf", "--norm", "l2", "--eps-linf",
                 "0.03", "--eps-l2", "0.5", "--n", "12", "--steps", "2", "--queries", "20", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "points attacked" in printed and "clean acc" in printed
    for norm in ("linf", "l2"):
        assert {p.name for p in (out / norm).iterdir()} >= {"standard.csv", "stages.csv", "result.json", "report.md"}
        doc = json.loads((out / norm / "result.json").read_text())["result"]
        assert doc["cascade"] and [s["attack"] for s in doc["stages"]] == suite_names("autoattack", norm)
        assert doc["stages"][0]["attacked"] == round(doc["clean_accuracy"] * 12)
        assert doc["notes"] == []  # FAB-T and Square are not gradient attacks
        fab = next(a for a in doc["attacks"] if a["attack"].startswith("fab"))
        assert "steps=2" in fab["attack_repr"] and fab["family"] == "boundary"


def test_cli_fast_suite_with_an_appended_attack(checkpoint, tmp_path, capsys):
    out = tmp_path / "fast"
    assert main(["evaluate", *checkpoint, "--suite", "fast", "--attack", "fgsm", "--eps", "0.05", "--n", "12",
                 "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "note: every attack here follows a loss gradient" in printed
    stages = list(csv.DictReader((out / "stages.csv").open(newline="")))
    assert [s["attack"] for s in stages] == ["pgd-linf", "lora-pgd-linf r=0.1", "apgd-ce-linf", "fgsm"]
    assert [int(s["attacked"]) for s in stages] == sorted((int(s["attacked"]) for s in stages), reverse=True)


def test_cli_cascade_without_a_suite(checkpoint, tmp_path):
    out = tmp_path / "cascade"
    assert main(["evaluate", *checkpoint, "--attack", "fgsm", "--attack", "pgd-linf", "--eps", "0.05", "--n", "12",
                 "--steps", "2", "--cascade", "--out", str(out), "--no-progress"]) == 0
    assert [s["attack"] for s in csv.DictReader((out / "stages.csv").open(newline=""))] == ["fgsm", "pgd-linf"]


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--suite", "autoatack"], "--suite: invalid choice: 'autoatack' (choose from 'autoattack', 'fast')"),
    (["evaluate", "--suite", "fast", "--norm", "l3"], "--norm: invalid choice: 'l3'"),
    (["evaluate", "--queries", "0"], "--queries must be an integer >= 1; got 0"),
    (["attack", "--suite", "fast"], "unrecognized arguments: --suite fast"),
    (["evaluate", "--model", "lenet5", "--n", "4", "--norm", "l2"], "--norm is the threat model of --suite"),
    (["evaluate", "--model", "lenet5", "--n", "4", "--suite", "fast", "--attack", "pgd-linf"],
     "--attack pgd-linf: 'pgd-linf' is already in --suite fast"),
    (["evaluate", "--model", "lenet5", "--n", "4", "--suite", "fast", "--rank", "40"],
     "--rank must be an int in [1, 28]"),
])
def test_cli_suite_errors_are_one_line(argv, needle, tmp_path, capsys):
    line = cli_error([*argv, "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert needle in line, line


def test_a_cascade_left_robust_at_its_largest_eps_is_flagged_once(model, data):
    """Without the cascade each attack that leaves the model robust at the largest ε is flagged; in a cascade the
    stages report the accuracy after them, so the flag comes once, for the cascade as a whole."""
    attacks = {"fgsm": at_eps(lambda e: FGSM(model, e, "linf")),
               "pgd": at_eps(lambda e: PGD(model, e, "linf", steps=2, seed=0))}
    for cascade, expected in ((False, ["'fgsm' leaves", "'pgd' leaves"]), (True, ["the cascade fgsm → pgd leaves"])):
        result = quiet(model, data, attacks, [0.005, 0.01], cascade=cascade)
        flagged = [w for w in result.warnings if "at its largest ε=0.01" in w]
        assert [w[:len(e)] for w, e in zip(flagged, expected)] == expected and len(flagged) == len(expected)
