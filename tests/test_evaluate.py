"""robustlr.evaluate on a small MLP trained in the test on two Gaussian blobs rendered as 1×8×8 images."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robustlr.attacks import FGSM, PGD
from robustlr.evaluate import AttackSpec, EvaluationResult, RobustnessWarning, at_eps, evaluate

EPS_GRID = [0.0, 0.5, 1.5, 4.0]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs: class 0 is brighter on the left half of the image, class 1 on the right."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    pattern = torch.ones(1, 8, 8)
    pattern[..., 4:] = -1
    sign = (1 - 2 * y).float()[:, None, None, None]
    x = 0.5 + 0.15 * sign * pattern + 0.1 * torch.randn(n, 1, 8, 8, generator=gen)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    x, y = blobs(256, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def test_data() -> tuple[torch.Tensor, torch.Tensor]:
    return blobs(40, seed=2)


def grid_attacks(model: nn.Module) -> dict[str, AttackSpec]:
    return {
        "pgd-l2": at_eps(lambda e: PGD(model, e, "l2", steps=5, random_start=False)),
        "fgsm-l2": at_eps(lambda e: FGSM(model, e, "l2")),
    }


@pytest.fixture(scope="module")
def result(model, test_data) -> EvaluationResult:
    attacks = {**grid_attacks(model), "identity": lambda x, y: x, "fgsm-fixed": FGSM(model, 0.5, "l2")}
    # nuclear=True: the norm tests below compare ‖δ‖_* with ‖δ‖₂ for every attack (by default only low-rank
    # attacks get the SVD, see test_engine_syncs.py)
    return evaluate(model, test_data, attacks, EPS_GRID, batch_size=16, progress=False, nuclear=True)


def test_model_is_learnable_and_breakable(result):
    assert result.clean_accuracy >= 0.9
    assert result.worst_at(4.0).robust_accuracy <= 0.1
    assert result.warnings == []


def test_worst_case_bounds_every_attack(result):
    assert [w.eps for w in result.worst_case] == EPS_GRID
    for worst in result.worst_case:
        at_eps_results = [r for r in result.attacks if r.eps is not None and math.isclose(r.eps, worst.eps)]
        assert {r.attack for r in at_eps_results} == set(worst.attacks)
        assert torch.equal(worst.robust, torch.stack([r.robust for r in at_eps_results]).all(dim=0))
        for r in at_eps_results:
            assert worst.robust_accuracy <= r.robust_accuracy
    # the fixed FGSM at ε = 0.5 joins the grid attacks' worst case at that ε
    assert result.worst_at(0.5).attacks == ["pgd-l2", "fgsm-l2", "fgsm-fixed"]


def test_robust_never_exceeds_clean_and_eps_zero_is_clean(result):
    for r in result.attacks:
        assert r.robust_accuracy <= result.clean_accuracy
        assert not (r.robust & ~result.clean_correct).any()
    for r in (r for r in result.attacks if r.eps == 0.0):
        assert r.robust_accuracy == result.clean_accuracy
        assert r.mean_l2 == r.mean_linf == r.mean_nuclear == 0.0


def test_norms_respect_the_budget(result):
    for r in result.attacks:
        if r.eps:
            assert 0 < r.mean_l2 <= r.eps + 1e-5
            assert 0 < r.mean_linf <= r.mean_l2 + 1e-6 <= r.mean_nuclear + 2e-6


def test_plain_callable_is_evaluated_once_at_no_eps(result):
    identity = [r for r in result.attacks if r.attack == "identity"]
    assert len(identity) == 1 and identity[0].eps is None and identity[0].kind == "fixed"
    assert identity[0].robust_accuracy == result.clean_accuracy
    assert identity[0].mean_l2 == 0.0
    fixed = result.worst_case_fixed
    assert fixed.attacks == ["identity", "fgsm-fixed"]
    assert fixed.robust_accuracy == [r for r in result.attacks if r.attack == "fgsm-fixed"][0].robust_accuracy


def test_to_dict_is_json_and_rows_cover_attack_by_eps(result):
    data = json.loads(json.dumps(result.to_dict()))
    assert data["n"] == 40 and data["clean_accuracy"] == result.clean_accuracy
    assert len(data["attacks"]) == len(result.rows()) == 2 * len(EPS_GRID) + 2
    row = result.rows()[1]
    assert row["worst_case_accuracy"] == result.worst_at(row["eps"]).robust_accuracy


def test_denominators_are_samples_not_batches(model, test_data):
    x, y = test_data[0][:10], test_data[1][:10].clone()
    y[:3] = 1 - y[:3]  # 3 wrong labels: clean accuracy exactly 0.7 for a model that gets the rest right
    assert (model(x).argmax(1) == test_data[1][:10]).all()
    attacks = {"fgsm": at_eps(lambda e: FGSM(model, e, "l2")), "flip": lambda x, y: 1 - x}  # flip swaps blobs
    result = evaluate(model, (x, y), attacks, [0.0, 1.0], batch_size=3, progress=False, sanity=False)
    assert result.n == 10 and result.clean_correct.shape == (10,)
    assert result.clean_accuracy == pytest.approx(0.7)
    for r in result.attacks:
        assert r.correct.shape == (10,)
        assert r.robust_accuracy * 10 == pytest.approx(round(r.robust_accuracy * 10))
        assert not (r.robust & ~result.clean_correct).any()
    flip = result.attacks[-1]  # the mislabelled samples are "correct" once flipped, yet not robust
    assert flip.correct[:3].all() and not flip.robust.any()


def test_dataset_and_loader_match_tensors_and_n_truncates(model, test_data):
    x, y = test_data
    attacks = {"fgsm": at_eps(lambda e: FGSM(model, e, "l2"))}
    kwargs = dict(eps_grid=[1.0], batch_size=7, n=25, progress=False, sanity=False)
    base = evaluate(model, (x, y), attacks, **kwargs)
    assert base.n == 25
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4)):
        other = evaluate(model, data, attacks, **kwargs)
        assert torch.equal(other.clean_correct, base.clean_correct)
        assert torch.equal(other.attacks[0].correct, base.attacks[0].correct)


def test_model_mode_is_eval_during_and_restored_after(model, test_data):
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 2)).train()
    net[1].eval()  # mixed modes must come back exactly
    seen = []

    def spy(x, y):
        seen.append(net.training or any(m.training for m in net.modules()))
        return x

    evaluate(net, test_data, {"spy": spy}, progress=False, sanity=False)
    assert seen and not any(seen)
    assert net.training and net[0].training and not net[1].training and net[2].training


def test_progress_bar_can_be_disabled(model, test_data, capsys):
    attacks = {"id": lambda x, y: x}
    evaluate(model, test_data, attacks, progress=False, sanity=False)
    assert "evaluate" not in capsys.readouterr().err
    evaluate(model, test_data, attacks, progress=True, sanity=False)
    assert "evaluate" in capsys.readouterr().err


# ---------------------------------------------------------------- sanity warnings


def test_non_monotone_attack_warns(model, test_data):
    def stronger_at_small_eps(eps: float):
        """Flips the image (swapping the blobs) for ε < 1, does nothing above."""
        return (lambda x, y: 1 - x) if eps < 1 else (lambda x, y: x)

    with pytest.warns(RobustnessWarning) as caught:
        result = evaluate(model, test_data, {"odd": at_eps(stronger_at_small_eps)}, [0.5, 2.0], progress=False)
    assert result.warnings == [str(w.message) for w in caught]
    assert result.warnings[0].startswith("robust accuracy of 'odd' increases with ε: 0 at ε=0.5 but 1 at ε=2")
    assert "at its largest ε=2" in result.warnings[1]  # an attack that fails at a large ε is flagged too


def test_attack_that_fails_at_large_eps_warns_carefully(model, test_data):
    with pytest.warns(RobustnessWarning, match="gradient masking or an ε grid that is too small"):
        result = evaluate(model, test_data, {"noop": at_eps(lambda e: lambda x, y: x)}, [0.0, 4.0], progress=False)
    assert len(result.warnings) == 1
    assert "if the model was not trained to be robust" in result.warnings[0]


def test_softmax_output_warns(model, test_data):
    probs = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.warns(RobustnessWarning, match="model seems to output probabilities, attacks need logits"):
        evaluate(probs, test_data, {"id": lambda x, y: x}, progress=False)


class ConstantModel(nn.Module):
    """Logits that do not depend on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 2)


def test_zero_gradient_warns_with_count(test_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(ConstantModel(), test_data, {"id": lambda x, y: x}, batch_size=16, progress=False)
    assert any("40 of 40 samples have an all-zero input gradient" in w for w in result.warnings)
    assert any(issubclass(c.category, RobustnessWarning) and "all-zero" in str(c.message) for c in caught)


def test_sanity_false_skips_checks(test_data):
    result = evaluate(ConstantModel(), test_data, {"id": lambda x, y: x}, progress=False, sanity=False)
    assert result.warnings == []


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data=(torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))), "data must hold at least one"),
        (dict(data=TensorDataset(torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))), "data must hold"),
        (dict(data=(torch.rand(5, 1, 8, 8), torch.zeros(4, dtype=torch.long))), "data must have as many labels"),
        (dict(data=(torch.rand(5, 64), torch.zeros(5, dtype=torch.long))), r"data must hold float images"),
        (dict(data=(torch.rand(5, 1, 8, 8), torch.rand(5))), "data must hold integer labels"),
        (dict(data=(torch.rand(5, 1, 8, 8), torch.full((5,), 7))), r"data must hold labels in \[0, 1\]"),
        (dict(data=[1, 2, 3]), "data must be an \\(x, y\\) tensor pair"),
        (dict(eps_grid=[0.1, -0.1]), "eps_grid must hold finite numbers >= 0, got -0.1"),
        (dict(eps_grid=[float("nan")]), "eps_grid must hold finite numbers >= 0, got nan"),
        (dict(eps_grid=[float("inf")]), "eps_grid must hold finite"),
        (dict(eps_grid=[]), "eps_grid must be a non-empty"),
        (dict(eps_grid=None), "eps_grid must be given"),
        (dict(attacks={}), "attacks must be a non-empty mapping"),
        (dict(attacks={"id": lambda x, y: x}), "eps_grid was given .* but no attack is an at_eps"),
        (dict(attacks={"pgd": lambda e: e, "fgsm": at_eps(lambda e: lambda x, y: x)}), "wrap an eps -> attack"),
        (dict(attacks={"bad": at_eps(lambda e: 3)}), r"attacks\['bad'\] built at eps=.* must be a callable"),
        (dict(attacks={"shape": at_eps(lambda e: lambda x, y: x[:1])}), r"attacks\['shape'\] at eps=1 must return"),
        (dict(batch_size=0), "batch_size must be an integer >= 1; got 0"),
        (dict(n=0), "n must be an integer >= 1; got 0"),
        (dict(device="nonsense"), "device must be a torch device"),
    ],
)
def test_bad_inputs_raise_value_error(model, test_data, kwargs, match):
    args = dict(data=test_data, attacks={"id": at_eps(lambda e: lambda x, y: x)}, eps_grid=[1.0])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate(model, args.pop("data"), args.pop("attacks"), args.pop("eps_grid"), progress=False, **args)


def test_at_eps_checks_the_factory():
    with pytest.raises(ValueError, match="factory must be a callable eps -> attack"):
        at_eps(lambda x, y: x)
    with pytest.raises(ValueError, match="factory must be a callable eps -> attack, got int"):
        at_eps(3)
