"""Export of low-rank models as plain PyTorch: to_plain / to_dense equivalence and parameter counts, the generated
model.py (loaded in a Python where robustlr cannot be imported), TorchScript, and the errors."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cli_error
from robustlr.cli import main
from robustlr.lowrank import FactorizedLinear, LowRankConv2d, LowRankLinear, to_lowrank
from robustlr.lowrank.export import factored_layers, parameter_counts, to_dense, to_plain
from robustlr.lowrank.export_files import RELATIVE_TOLERANCE, export_model
from robustlr.lowrank.export_source import check_rebuilt, import_source, module_source
from robustlr.models import LeNet5, ResNet, create, make_activation
from robustlr.train import TrainConfig
from robustlr.train.checkpointing import save_weights
from robustlr.train.quick import fit

ATOL = 1e-5


def truncated(model: nn.Module, fraction: float) -> nn.Module:
    """A copy of a U S Vᵀ model with every layer cut to ``ceil(fraction · rank)`` (its leading factors), and the
    core rotated by an orthogonal matrix so that S is a full matrix, not diagonal."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    for _, layer in factored_layers(model):
        u, s, v = layer.factors()
        r = max(1, math.ceil(fraction * layer.rank))
        rotation = torch.linalg.qr(torch.randn(r, r, generator=gen))[0]
        layer.set_factors(u[:, :r].clone(), s[:r, :r] @ rotation, v[:, :r].clone())
    return model


def assert_same_logits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal within 1e-5, and within 1e-4 of the logits' size (random networks have small logits)."""
    got, want = got.detach(), want.detach()
    scale = float(want.abs().max())
    assert scale > 1e-3, "the comparison needs logits that are not all ~0"
    diff = float((got - want).abs().max())
    assert diff <= ATOL and diff <= 1e-4 * scale, (diff, scale)


@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Low-rank (rank 0.5) models of the zoo: LeNet5, VGG16, a pre-activation ResNet (WRN-10-1) and a bottleneck
    ResNet; with a batch of inputs each."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    models = {
        "lenet5": (create("lenet5"), (1, 28, 28)),
        "vgg16": (create("vgg16", mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]), (3, 32, 32)),
        "wrn-10-1": (create("wrn-10-1"), (3, 32, 32)),
        "resnet-bottleneck": (ResNet((1, 1, 1, 1), num_classes=10, image_size=32), (3, 32, 32)),
    }
    return {name: (to_lowrank(model, 0.5).eval(), torch.rand(4, *shape, generator=gen))
            for name, (model, shape) in models.items()}


@pytest.mark.parametrize("fraction", [1.0, 0.2])
@pytest.mark.parametrize("name", ["lenet5", "vgg16", "wrn-10-1", "resnet-bottleneck"])
def test_plain_and_dense_give_the_low_rank_logits(zoo, name: str, fraction: float) -> None:
    lowrank, x = zoo[name]
    lowrank = truncated(lowrank, fraction)
    plain, dense = to_plain(lowrank), to_dense(lowrank)
    assert not factored_layers(plain) and not factored_layers(dense)
    with torch.no_grad():
        want = lowrank(x)
        assert_same_logits(plain(x), want)
        assert_same_logits(dense(x), want)


def test_train_mode_outputs_statistics_and_flags_are_kept(zoo) -> None:
    lowrank = truncated(zoo["vgg16"][0], 0.3).train()
    lowrank.model.features[1].eval()  # a frozen BatchNorm keeps its own mode
    x = zoo["vgg16"][1]
    plain = to_plain(lowrank)
    assert [m.training for m in plain.modules() if isinstance(m, nn.BatchNorm2d)] == [
        m.training for m in lowrank.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training for m in plain.modules() if isinstance(m, nn.Sequential))
    outputs = []
    for net in (lowrank, plain):
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(5)  # the same dropout masks
            outputs.append(net(x))
    assert_same_logits(outputs[1], outputs[0])
    bn_low, bn_plain = lowrank.model.features[4], plain.model.features[4]
    torch.testing.assert_close(bn_plain.running_mean, bn_low.running_mean, atol=ATOL, rtol=0)
    assert lowrank.model.features[1].training is False and plain.model.features[1].training is False


def test_plain_layers_are_the_documented_factors() -> None:
    torch.manual_seed(0)
    linear = LowRankLinear(12, 7, rank=3)
    conv = LowRankConv2d(3, 8, (3, 2), rank=4, stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                         padding_mode="reflect")
    for layer in (linear, conv):
        with torch.no_grad():
            layer.S.copy_(torch.randn_like(layer.S))
    first, second = to_plain(linear)
    assert (first.in_features, first.out_features, first.bias) == (12, 3, None)
    assert (second.in_features, second.out_features) == (3, 7) and torch.equal(second.bias, linear.bias)
    u, s, v = linear.factors()
    torch.testing.assert_close(first.weight @ first.weight.T, torch.eye(3), atol=ATOL, rtol=0)  # Vᵀ: orthonormal rows
    torch.testing.assert_close(second.weight, u @ s, atol=ATOL, rtol=0)
    reduce, expand = to_plain(conv)
    assert (reduce.out_channels, reduce.kernel_size, reduce.stride, reduce.padding, reduce.dilation,
            reduce.padding_mode, reduce.bias) == (4, (3, 2), (2, 1), (1, 2), (1, 2), "reflect", None)
    assert (expand.in_channels, expand.out_channels, expand.kernel_size) == (4, 8, (1, 1))
    x = torch.randn(2, 12)
    assert_same_logits(to_plain(linear)(x), F.linear(x, u @ s @ v.T, linear.bias))
    images = torch.randn(2, 3, 9, 10)
    assert_same_logits(to_plain(conv)(images), conv(images))
    conv.groups = 2
    with pytest.raises(ValueError, match="groups must be 1.*got groups=2"):
        to_plain(conv)


def test_parameter_counts_are_r_times_n_plus_m_plus_bias() -> None:
    torch.manual_seed(0)
    dense = LeNet5()
    lowrank = to_lowrank(copy.deepcopy(dense), 0.3, max_rank=0.6)  # unused capacity is not counted
    expected_plain = expected_lowrank = 0
    for _, layer in factored_layers(lowrank):
        n, m = layer.matrix_shape
        bias = 0 if layer.bias is None else n
        expected_plain += layer.rank * (n + m) + bias
        expected_lowrank += layer.rank * (n + m) + layer.rank ** 2 + bias
    counts = parameter_counts(lowrank)
    plain = to_plain(lowrank)
    assert sum(p.numel() for p in plain.parameters()) == counts.plain == expected_plain
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert_same_logits(plain(x), lowrank(x))
    assert counts.lowrank == expected_lowrank
    assert sum(p.numel() for p in to_dense(lowrank).parameters()) == counts.dense == sum(
        p.numel() for p in dense.parameters())
    vanilla = to_lowrank(copy.deepcopy(dense), 0.3, method="vanilla")
    assert parameter_counts(vanilla).plain == parameter_counts(vanilla).lowrank == expected_plain


def test_shared_layers_stay_shared_and_vanilla_layers_convert() -> None:
    torch.manual_seed(0)
    shared = LowRankLinear(6, 6, rank=2)
    model = nn.Sequential(shared, nn.Tanh(), shared, FactorizedLinear(6, 3, rank=2))
    plain = to_plain(model)
    assert plain[0] is plain[2] and isinstance(plain[3][0], nn.Linear)
    x = torch.randn(5, 6)
    assert_same_logits(plain(x), model(x))
    rebuilt = import_source_text(module_source(plain)).build()
    assert rebuilt[0] is rebuilt[2]
    check_rebuilt(rebuilt, plain, plain.state_dict())
    assert_same_logits(rebuilt(x), model(x))


def test_conversion_inputs() -> None:
    with pytest.raises(ValueError, match="model has no low-rank layer.*got a Sequential"):
        to_plain(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="model must be a torch.nn.Module; got str"):
        to_dense("model")
    dense = nn.Sequential(nn.Linear(3, 2))
    copied = to_dense(dense)
    assert copied is not dense and torch.equal(copied[0].weight, dense[0].weight)
    lone = LowRankLinear(4, 3, rank=2)
    assert isinstance(to_plain(lone), nn.Sequential) and isinstance(to_dense(lone), nn.Linear)


# ---------------------------------------------------------------------------------------- the generated source

_counter = iter(range(1_000_000))


def import_source_text(text: str, directory: Path | None = None) -> object:
    path = Path(directory or "/tmp") / f"robustlr_test_export_{next(_counter)}_{id(text)}.py"
    path.write_text(text)
    try:
        return import_source(path)
    finally:
        path.unlink()


SCALE = 0.5


class Custom(nn.Module):
    """Exercises what the generated file copies: helpers, a property, a staticmethod, a class constant, a
    literal global, torch.nn.functional and math, plain attributes, direct parameters and buffers."""

    power = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = SCALE
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("offset", torch.randn(4))
        self.missing = None
        self.inner = nn.Linear(4, 4)

    @property
    def width(self) -> int:
        return self.weight.shape[0]

    @width.setter
    def width(self, value: int) -> None:
        raise AttributeError(f"width is {self.weight.shape[0]}")

    @staticmethod
    def squash(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * math.pi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight) ** self.power + self.offset
        return self.squash(self.inner(y) * self.scale * SCALE)[:, : self.width]


def test_generated_source_rebuilds_custom_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Custom().double()
    text = module_source(model, "a docstring")
    assert text.startswith('"""a docstring') and "robustlr" not in text.replace("robustlr_", "")
    rebuilt = check_rebuilt(import_source_text(text, tmp_path).build(), model, model.state_dict())
    assert rebuilt.weight.dtype == torch.float64 and rebuilt.missing is None and rebuilt.width == 4
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)


class CallsRobustlr(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return make_activation("relu")(x)


class Closure(nn.Module):
    pass


def _closure_forward():
    factor = 3.0

    def forward(self, x):
        return x * factor

    return forward


Closure.forward = _closure_forward()


class LinearSubclass(nn.Linear):
    pass


class Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = object()


class NotPersistent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(2), persistent=False)


@pytest.mark.parametrize(("model", "message"), [
    (nn.Sequential(nn.Linear(2, 2), CallsRobustlr()), r"cannot write 1 \(test_export.CallsRobustlr\) as plain "
     r"PyTorch source: its method 'forward' refers to 'make_activation' \(a function from module robustlr"),
    (nn.Sequential(Closure()), r"0 .*Closure.*enclosing scope"),
    (nn.Sequential(LinearSubclass(2, 2)), r"subclasses torch.nn.Linear"),
    (Opaque(), r"the model .*Opaque.*attribute 'table' is a object, not a Python literal"),
    (NotPersistent(), r"buffers \['cache'\] are not persistent"),
    (nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double()), r"several floating dtypes"),
])
def test_generated_source_refuses_what_it_cannot_hold(model: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        module_source(model)
    assert "torchscript" in str(error.value)


def test_generated_source_refuses_hooks_and_checks_the_rebuild() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match=r"cannot write 0 \(torch.nn.modules.linear.Linear\).*hooks "
                                         r"\(_forward_hooks\)"):
        module_source(model)
    with pytest.raises(ValueError, match=r"state-dict entry '0.weight' is \(\(3, 2\).*expected \(\(2, 2\)"):
        check_rebuilt(nn.Sequential(nn.Linear(2, 3)), nn.Sequential(nn.Linear(2, 2)), {})
    with pytest.raises(ValueError, match=r"line 2 of its repr is '\(0\): Tanh\(\)', expected '\(0\): ReLU\(\)'"):
        check_rebuilt(nn.Sequential(nn.Tanh()), nn.Sequential(nn.ReLU()), {})


# -------------------------------------------------------------------------------- exports loaded without robustlr

@pytest.fixture(scope="module")
def trained(fmnist) -> tuple[nn.Module, torch.Tensor]:
    """LeNet5 trained one epoch on 3000 real Fashion-MNIST images, then cut to rank 0.3 (CondLR layers); 64 test
    images."""
    train, test = fmnist
    torch.manual_seed(0)
    dense = create("lenet5")
    fit(dense, train.images[:3000], train.labels[:3000], epochs=1, lr=0.05, batch_size=128, seed=0)
    return to_lowrank(dense, 0.3).eval(), test.images[:64]


_LOADER = textwrap.dedent("""
    import sys
    sys.modules["robustlr"] = None  # robustlr cannot be imported, whatever sys.path holds
    try:
        import robustlr
    except ImportError:
        pass
    else:
        raise SystemExit("robustlr is importable")
    import torch
    py, dense, ts, images, out = sys.argv[1:]
    outputs = {}
    for name, directory in (("py", py), ("dense", dense)):
        sys.path.insert(0, directory)
        import model
        outputs[name] = model.load()(torch.load(images)).detach()
        fresh = model.build()
        fresh.load_state_dict(torch.load(directory + "/state_dict.pt", weights_only=True))
        outputs[name + "-build"] = fresh.eval()(torch.load(images)).detach()
        sys.path.remove(directory)
        del sys.modules["model"]
    outputs["ts"] = torch.jit.load(ts + "/model.ts")(torch.load(images)).detach()
    assert not [key for key, value in sys.modules.items() if key.startswith("robustlr") and value is not None]
    torch.save(outputs, out)
""")


def test_exports_load_without_robustlr_and_give_the_same_logits(trained, tmp_path: Path) -> None:
    model, images = trained
    records = {}
    for name, options in (("py", {}), ("dense", {"dense": True}), ("ts", {"format": "torchscript"})):
        records[name] = export_model(model, tmp_path / name, images, batch_size=32, **options)
    torch.save(images, tmp_path / "images.pt")
    run = subprocess.run(
        [sys.executable, "-I", "-c", _LOADER, *(str(tmp_path / name) for name in ("py", "dense", "ts")),
         str(tmp_path / "images.pt"), str(tmp_path / "logits.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    logits = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        want = model(images)
    assert float(want.abs().max()) > 1, "a trained network has logits of size"
    for name, got in logits.items():
        assert_same_logits(got, want)
    counts = parameter_counts(model)
    assert records["py"]["parameters"] == {"lowrank": counts.lowrank, "exported": counts.plain, "dense": counts.dense}
    assert records["dense"]["parameters"]["exported"] == counts.dense
    for name, record in records.items():
        on_disk = json.loads((tmp_path / name / "export.json").read_text())
        assert on_disk == record and record["logits_check"]["images"] == 64
        assert 0 <= record["logits_check"]["max_abs_diff"] <= ATOL
    assert [row["rank"] for row in records["py"]["ranks"]] == [layer.rank for _, layer in factored_layers(model)]


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] + torch.rand(len(x), 3)


def test_export_refuses_an_unfaithful_export_and_bad_inputs(trained, tmp_path: Path) -> None:
    model, images = trained
    with pytest.raises(ValueError, match=r"does not reproduce the model's logits: the largest difference is .* above "
                                         r"the tolerance 0.0001"):
        export_model(nn.Sequential(Noisy()), tmp_path / "noisy", images, dense=True)
    assert RELATIVE_TOLERANCE == 1e-4
    for kwargs, message in [
        ({"format": "zip"}, r"format must be one of 'py', 'torchscript', 'onnx'; got 'zip'"),
        ({"dense": 1}, r"dense must be True or False; got 1"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1; got 0"),
        ({"images": images.long()}, r"images must be a non-empty floating-point batch .* torch.int64"),
        ({"images": images[:0]}, r"images must be a non-empty floating-point batch"),
        ({"images": images * math.nan}, r"images must be finite"),
    ]:
        arguments = {"images": images} | kwargs
        with pytest.raises(ValueError, match=message):
            export_model(model, tmp_path / "bad", **arguments)
    if all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")):  # optional packages
        record = export_model(model, tmp_path / "onnx", images, format="onnx", batch_size=16)
        assert record["files"] == ["model.onnx"] and record["logits_check"]["max_abs_diff"] <= ATOL
    else:
        with pytest.raises(ValueError, match=r"format 'onnx' needs the packages onnx, onnxscript, onnxruntime; "
                                             r"missing: .*pip install"):
            export_model(model, tmp_path / "onnx", images, format="onnx")


# ------------------------------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def checkpoints(trained, tmp_path_factory) -> tuple[Path, Path]:
    """A CondLR checkpoint of robustlr train (the trained low-rank LeNet5) and a dense state dict for --model."""
    model, _ = trained
    root = tmp_path_factory.mktemp("checkpoints")
    save_weights(root / "best.pt", model, TrainConfig(method="condlr", rank=0.3, out=str(root)), {"epoch": 1})
    torch.save(to_dense(model).state_dict(), root / "dense.pt")
    return root / "best.pt", root / "dense.pt"


def test_cli_export(checkpoints, tmp_path: Path, capsys) -> None:
    lowrank, _ = checkpoints
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(lowrank), "--out", str(out), "--n", "32"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "export.json").read_text())
    counts = record["parameters"]
    assert f"low-rank {counts['lowrank']:,}" in printed and f"exported {counts['exported']:,}" in printed
    assert f"largest difference {record['logits_check']['max_abs_diff']:.3g}" in printed
    written = sorted(p.name for p in out.iterdir())
    assert written == [".robustlr-output.json", "export.json", "model.py", "state_dict.pt"]
    assert record["source"]["checkpoint"] == str(lowrank) and counts["exported"] < counts["lowrank"] < counts["dense"]


def test_cli_export_errors(checkpoints, tmp_path: Path, capsys) -> None:
    lowrank, dense = checkpoints
    out = ["--out", str(tmp_path / "out")]
    assert "--checkpoint PATH is required" in cli_error(["export", *out], capsys)
    assert "--checkpoint must be an existing checkpoint file" in cli_error(
        ["export", "--checkpoint", str(tmp_path / "absent.pt"), *out], capsys)
    line = cli_error(["export", "--model", "lenet5", "--checkpoint", str(dense), *out, "--n", "8"], capsys)
    assert f"--checkpoint {dense} has no low-rank layer" in line and "--dense" in line
    assert "--format: invalid choice: 'zip'" in cli_error(["export", "--checkpoint", str(lowrank), "--format", "zip"],
                                                          capsys)
    if not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")):
        line = cli_error(["export", "--checkpoint", str(lowrank), "--format", "onnx", *out], capsys)
        assert "--format 'onnx' needs the packages onnx, onnxscript, onnxruntime" in line and "pip install" in line
    assert not (tmp_path / "out").exists()
    assert main(["export", "--model", "lenet5", "--checkpoint", str(dense), "--dense", *out, "--n", "8"]) == 0
    assert json.loads((tmp_path / "out" / "export.json").read_text())["layers"] == "dense"
