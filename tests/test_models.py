"""Tests for robustlr.models: the zoo, normalization, checkpoints, user model files."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import robustlr
from robustlr.models import (
    LEAKY_RELU_SLOPE,
    Normalize,
    PreActBlock,
    available_models,
    create,
    creation_args,
    load_checkpoint,
    load_model_file,
    save_checkpoint,
    sidecar_path,
    with_normalization,
)

# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def lenet() -> nn.Module:
    return create("lenet5").eval()


@pytest.fixture
def small_wrn() -> nn.Module:
    """WRN-10-2: one block per group (16 -> 32 -> 64 -> 128 channels, so every block
    has a 1x1 shortcut conv), cheap, with BatchNorm."""
    return create("wrn-10-2", in_channels=3, image_size=16)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------- parameter counts, by hand


def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def fc(fin: int, fout: int) -> int:
    return fin * fout + fout


def bn(c: int) -> int:
    return 2 * c


def preact_block(cin: int, cout: int) -> int:
    # bn1, conv3x3, bn2, conv3x3, and a 1x1 shortcut conv when channels change
    shortcut = conv(cin, cout, 1) if cin != cout else 0
    return bn(cin) + conv(cin, cout, 3) + bn(cout) + conv(cout, cout, 3) + shortcut


LENET5_28 = conv(1, 20, 5, True) + conv(20, 50, 5, True) + fc(800, 500) + fc(500, 10)
MLP_28 = fc(784, 256) + fc(256, 256) + fc(256, 10)
VGG16_WIDTHS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
VGG16_32 = (sum(conv(a, b, 3) + bn(b) for a, b in VGG16_WIDTHS)
            + fc(512, 512) + fc(512, 512) + fc(512, 10))
WRN_16_4 = (conv(3, 16, 3)
            + preact_block(16, 64) + preact_block(64, 64)
            + preact_block(64, 128) + preact_block(128, 128)
            + preact_block(128, 256) + preact_block(256, 256)
            + bn(256) + fc(256, 10))
PREACT18 = (conv(3, 64, 3)
            + 2 * preact_block(64, 64)
            + preact_block(64, 128) + preact_block(128, 128)
            + preact_block(128, 256) + preact_block(256, 256)
            + preact_block(256, 512) + preact_block(512, 512)
            + bn(512) + fc(512, 10))


def bottleneck(cin: int, width: int) -> int:
    # conv1x1 - bn - conv3x3 - bn - conv1x1 (x4) - bn, and a 1x1 conv + bn shortcut when channels change
    shortcut = conv(cin, 4 * width, 1) + bn(4 * width) if cin != 4 * width else 0
    return (conv(cin, width, 1) + bn(width) + conv(width, width, 3) + bn(width)
            + conv(width, 4 * width, 1) + bn(4 * width) + shortcut)


def resnet50_count(classes: int, stem_kernel: int = 7) -> int:
    groups = [(64, 3), (128, 4), (256, 6), (512, 3)]
    blocks, cin = 0, 64
    for width, n in groups:
        blocks += bottleneck(cin, width) + (n - 1) * bottleneck(4 * width, width)
        cin = 4 * width
    return conv(3, 64, stem_kernel) + bn(64) + blocks + fc(2048, classes)


def test_hand_counts_match_known_values() -> None:
    assert LENET5_28 == 431_080
    assert resnet50_count(1000) == 25_557_032  # torchvision's resnet50
    assert WRN_16_4 == 2_748_890  # the usual "2.7M" of WRN-16-4


CASES = [  # name, in_channels, image_size, parameter count
    ("lenet5", 1, 28, LENET5_28),
    ("mlp", 1, 28, MLP_28),
    ("vgg16", 3, 32, VGG16_32),
    ("wrn-16-4", 3, 32, WRN_16_4),
    ("preact-resnet18", 3, 32, PREACT18),
]


@pytest.mark.parametrize(("name", "channels", "size", "count"), CASES)
def test_output_shape_and_parameter_count(name: str, channels: int, size: int, count: int) -> None:
    model = create(name, num_classes=10, in_channels=channels, image_size=size)
    assert model(torch.rand(2, channels, size, size)).shape == (2, 10)
    assert n_params(model) == count


@pytest.mark.parametrize(("name", "channels", "size"), [(c[0], c[1], c[2]) for c in CASES])
def test_defaults_fit_the_model(name: str, channels: int, size: int) -> None:
    args = creation_args(create(name))
    assert (args["in_channels"], args["image_size"]) == (channels, size)


def test_available_models() -> None:
    assert available_models() == ["lenet5", "mlp", "preact-resnet18", "resnet50", "vgg16", "wrn-16-4"]


def test_lenet_flatten_size_follows_image_size() -> None:
    model = create("lenet5", num_classes=7, in_channels=3, image_size=32)  # 32 -> 28 -> 14 -> 10 -> 5
    assert model.classifier[1].in_features == 50 * 5 * 5
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert create("lenet5", image_size=16).classifier[1].in_features == 50


def test_vgg16_structure() -> None:
    model = create("vgg16", in_channels=3, image_size=48)
    modules = list(model.modules())
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    norms = [m for m in modules if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 13 and all(m.momentum == 0.1 for m in norms)
    assert sum(isinstance(m, nn.MaxPool2d) for m in modules) == 5
    assert [m.p for m in modules if isinstance(m, nn.Dropout)] == [0.2]
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 10)  # adaptive pool handles 48x48


def test_wrn_general_depth_and_width() -> None:
    model = create("wrn-22-2", num_classes=5, in_channels=3, image_size=32)
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    assert len(blocks) == 9  # (22 - 4) / 6 = 3 per group
    assert [b.conv2.out_channels for b in blocks[::3]] == [32, 64, 128]
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def activations(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.LeakyReLU, nn.ReLU))]


@pytest.mark.parametrize("name", ["lenet5", "mlp", "wrn-10-1"])
def test_activation_choice(name: str) -> None:
    leaky = activations(create(name))
    assert LEAKY_RELU_SLOPE == 0.01
    assert leaky and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01 for m in leaky)
    relu = activations(create(name, activation="relu"))
    assert len(relu) == len(leaky) and all(type(m) is nn.ReLU for m in relu)


def test_mlp_hidden_sizes_option() -> None:
    model = create("mlp", in_channels=3, image_size=8, hidden_sizes=[32])
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [32, 10]
    assert n_params(create("mlp", hidden_sizes=())) == fc(784, 10)


# ------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"name": "resnet101"}, ["name", "'resnet101'", "lenet5", "resnet50", "wrn-D-K"]),
        ({"name": "resnet50", "stem": "cifar"}, ["stem", "'cifar'", "auto", "imagenet", "small"]),
        ({"name": "resnet50", "image_size": 7}, ["image_size", "7", ">= 8", "small stem"]),
        ({"name": "resnet50", "image_size": 31, "stem": "imagenet"}, ["image_size", "31", ">= 32", "imagenet"]),
        ({"name": "wrn-15-4"}, ["depth", "15", "6n + 4"]),
        ({"name": "wrn-16-0"}, ["widen_factor", "0", ">= 1"]),
        ({"name": "lenet5", "activation": "tanh"}, ["activation", "'tanh'", "leaky_relu", "relu"]),
        ({"name": "lenet5", "num_classes": 1}, ["num_classes", "1", ">= 2"]),
        ({"name": "lenet5", "num_classes": True}, ["num_classes", "True"]),
        ({"name": "vgg16", "in_channels": 0}, ["in_channels", "0", ">= 1"]),
        ({"name": "lenet5", "image_size": 15}, ["image_size", "15", ">= 16"]),
        ({"name": "vgg16", "image_size": 28}, ["image_size", "28", ">= 32"]),
        ({"name": "mlp", "hidden_sizes": [8, 0]}, ["hidden_sizes[1]", "0", ">= 1"]),
        ({"name": "mlp", "depth": 3}, ["depth", "'mlp'", "hidden_sizes"]),
        ({"name": "lenet5", "mean": [0.5]}, ["mean", "std", "together"]),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        create(**kwargs)
    for fragment in fragments:
        assert fragment in str(error.value)


# --------------------------------------------------------- ResNet-50


def test_resnet50_is_torchvisions_network() -> None:
    model = create("resnet50", num_classes=1000, in_channels=3, image_size=224, activation="relu")
    assert n_params(model) == 25_557_032
    assert creation_args(model)["image_size"] == 224 and creation_args(create("resnet50"))["image_size"] == 224
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert (model.conv1.kernel_size, model.conv1.stride, type(model.maxpool)) == ((7, 7), (2, 2), nn.MaxPool2d)
    # torchvision's v1.5: a downsampling block strides its 3x3 conv; its shortcut is conv1x1 + BN
    first = model.layer2[0]
    assert (first.conv1.stride, first.conv2.stride, first.downsample[0].stride) == ((1, 1), (2, 2), (2, 2))
    keys = model.state_dict().keys()
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.1.weight", "layer4.2.bn3.bias",
            "fc.weight", "fc.bias"} <= keys
    assert not any(k.startswith("layer1.1.downsample") for k in keys)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize(("size", "stem", "kernel"), [(32, "auto", 3), (63, "auto", 3), (64, "auto", 7),
                                                       (32, "imagenet", 7), (96, "small", 3)])
def test_resnet50_stems(size: int, stem: str, kernel: int) -> None:
    model = create("resnet50", num_classes=10, in_channels=3, image_size=size, stem=stem)
    assert model.conv1.kernel_size == (kernel, kernel)
    assert isinstance(model.maxpool, nn.MaxPool2d if kernel == 7 else nn.Identity)
    assert n_params(model) == resnet50_count(10, kernel)
    assert model(torch.rand(2, 3, size, size)).shape == (2, 10)


# --------------------------------------------------------- WRN residuals


def test_wrn_gradients_reach_shortcut_convs(small_wrn: nn.Module) -> None:
    small_wrn(torch.rand(4, 3, 16, 16)).sum().backward()
    blocks = [b for b in small_wrn.modules() if isinstance(b, PreActBlock)]
    shortcuts = [b.shortcut for b in blocks if b.shortcut is not None]
    assert len(shortcuts) == 3
    for shortcut in shortcuts:
        assert shortcut.weight.grad is not None and shortcut.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("part", ["residual", "shortcut"])
def test_wrn_output_depends_on_both_paths(small_wrn: nn.Module, part: str) -> None:
    small_wrn.eval()
    x = torch.rand(2, 3, 16, 16)
    before = small_wrn(x)
    with torch.no_grad():
        for block in small_wrn.modules():
            if isinstance(block, PreActBlock):
                zeroed = block.conv2 if part == "residual" else block.shortcut
                if zeroed is not None:
                    zeroed.weight.zero_()
    assert not torch.allclose(before, small_wrn(x))


@pytest.mark.parametrize(("cin", "cout", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_preact_block_adds_branch_and_shortcut(cin: int, cout: int, stride: int) -> None:
    block = PreActBlock(cin, cout, stride, "leaky_relu").eval()
    x = torch.randn(2, cin, 8, 8)
    pre = block.act1(block.bn1(x))
    branch = block.conv2(block.act2(block.bn2(block.conv1(pre))))
    shortcut = x if block.shortcut is None else block.shortcut(pre)
    assert (block.shortcut is None) == (cin == cout and stride == 1)
    torch.testing.assert_close(block(x), branch + shortcut)


# ------------------------------------------------------------ Normalize


def test_normalize_math() -> None:
    norm = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    x = torch.rand(2, 3, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25, x[:, 2] / 2.0], dim=1)
    torch.testing.assert_close(norm(x), expected)
    assert set(norm.state_dict()) == {"mean", "std"}
    assert norm.to(torch.float64)(x.double()).dtype == torch.float64


def test_single_value_normalize_applies_to_every_channel() -> None:
    x = torch.rand(1, 3, 2, 2)
    torch.testing.assert_close(Normalize([0.1], [0.2])(x), (x - 0.1) / 0.2)


@pytest.mark.parametrize(
    ("mean", "std", "fragment"),
    [
        ([0.5], [0.0], "std entries must all be > 0"),
        ([0.5, 0.5], [0.2], "same length"),
        ([], [], "mean must be a non-empty sequence"),
        ([0.5], "a", "std must be a non-empty sequence"),
        ([float("nan")], [1.0], "finite"),
    ],
)
def test_normalize_rejects_bad_statistics(mean: list, std: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Normalize(mean, std)


def test_normalize_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3, H, W\)"):
        Normalize([0.0] * 3, [1.0] * 3)(torch.rand(2, 1, 4, 4))


def test_with_normalization(lenet: nn.Module) -> None:
    wrapped = with_normalization(lenet, [0.1307], [0.3081])
    assert isinstance(wrapped, nn.Sequential) and isinstance(wrapped[0], Normalize)
    assert wrapped[1] is lenet
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(wrapped(x), lenet((x - 0.1307) / 0.3081))


def test_create_with_normalization_records_statistics() -> None:
    model = create("lenet5", mean=[0.5], std=[0.25])
    assert isinstance(model[0], Normalize)
    assert creation_args(model)["mean"] == [0.5] and creation_args(model)["std"] == [0.25]


# ------------------------------------------------------------ checkpoints


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_checkpoint_round_trip_rebuilds_from_sidecar(tmp_path: Path, small_wrn: nn.Module) -> None:
    small_wrn(torch.rand(8, 3, 16, 16))  # train-mode pass: BatchNorm running stats move
    path = tmp_path / "sub" / "wrn.pt"
    save_checkpoint(path, small_wrn, {"data": {"dataset": "cifar10"}, "metrics": {"accuracy": 0.5}})
    loaded, meta = load_checkpoint(path)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(outputs(small_wrn, x), outputs(loaded, x))
    assert meta["metrics"] == {"accuracy": 0.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["wrn.pt", "wrn.pt.json"]  # no temp files


def test_sidecar_content(tmp_path: Path) -> None:
    model = create("mlp", in_channels=3, image_size=8, hidden_sizes=(16,), mean=[0.5] * 3, std=[0.5] * 3)
    path = tmp_path / "mlp.pt"
    returned = save_checkpoint(path, model, {"data": {"name": "digits"}, "metrics": {"loss": 1.5}})
    assert sidecar_path(path) == tmp_path / "mlp.pt.json"
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar == json.loads(json.dumps(returned))
    assert sidecar["model"] == "mlp"
    assert sidecar["model_args"] == {
        "name": "mlp", "num_classes": 10, "in_channels": 3, "image_size": 8,
        "activation": "leaky_relu", "hidden_sizes": [16], "mean": [0.5] * 3, "std": [0.5] * 3,
    }
    assert sidecar["data"] == {"name": "digits"} and sidecar["metrics"] == {"loss": 1.5}
    assert sidecar["robustlr_version"] == robustlr.__version__
    assert sidecar["torch_version"] == str(torch.__version__)
    loaded, _ = load_checkpoint(path)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(outputs(model, x), outputs(loaded, x))


def test_load_into_given_model_without_sidecar(tmp_path: Path, lenet: nn.Module) -> None:
    path = tmp_path / "lenet.pt"
    torch.save(lenet.state_dict(), path)
    loaded, meta = load_checkpoint(path, create("lenet5"))
    assert meta == {}
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(outputs(lenet, x), outputs(loaded, x))
    with pytest.raises(ValueError, match=r"sidecar .* is missing; pass model="):
        load_checkpoint(path)


def test_model_not_built_by_create_needs_a_model_to_load(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    meta = save_checkpoint(path, nn.Linear(3, 2))
    assert meta["model"] == "Linear" and meta["model_args"] is None
    with pytest.raises(ValueError, match="has no 'model_args'; pass model="):
        load_checkpoint(path)
    assert isinstance(load_checkpoint(path, nn.Linear(3, 2))[0], nn.Linear)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (nn.Linear(2, 2), "not a state dict: it pickles objects other than tensors"),
        (torch.zeros(3), "not a state dict: it holds a Tensor"),
        ({"model": {"w": torch.zeros(1)}, "epoch": 3}, "not a state dict: entries ['model', 'epoch']"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, lenet: nn.Module, content: object, fragment: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, lenet)
    assert fragment in str(error.value)


def test_unreadable_and_missing_files(tmp_path: Path, lenet: nn.Module) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"checkpoint '.*junk.pt' is not a torch file \(truncated or corrupt"):
        load_checkpoint(tmp_path / "junk.pt", lenet)
    with pytest.raises(ValueError, match="path must be an existing checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt", lenet)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    damaged = {"empty": b"", "truncated": data[: len(data) // 2], "zeroed": data[:100] + bytes(len(data) - 100)}
    path.write_bytes(damaged[how])


@pytest.mark.parametrize(
    ("how", "fragment"),
    [
        ("empty", "is empty (0 bytes)"),
        ("truncated", "is not a torch file (truncated or corrupt: not a complete zip archive"),
        ("zeroed", "is not a torch file (truncated or corrupt: "),
    ],
)
def test_damaged_checkpoint_says_what_is_wrong(tmp_path: Path, lenet: nn.Module, how: str, fragment: str) -> None:
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, lenet)
    _damage(path, how)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"checkpoint {str(path)!r} ") and fragment in message and "\n" not in message


@pytest.mark.parametrize(
    ("sidecar", "fragment"),
    [
        ("", "is empty (0 bytes)"),
        ('{"model": "lenet5",\n "model_args": {"name": "lenet5"}', "is not valid JSON (line 2 column"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('{"model_args": ["lenet5"]}', "model_args must be an object of create() arguments with a 'name'"),
        ('{"model_args": {"name": "lenet5", "widht": 3}}', "do not build a model: options ['widht']"),
        ('{"model_args": {"name": "lenet5", "num_classes": "ten"}}', "do not build a model"),
    ],
)
def test_malformed_sidecar_names_the_file(tmp_path: Path, lenet: nn.Module, sidecar: str, fragment: str) -> None:
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, lenet)
    sidecar_path(path).write_text(sidecar)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(sidecar_path(path)) in message and fragment in message


def test_mismatched_checkpoint_lists_keys(tmp_path: Path, lenet: nn.Module) -> None:
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, lenet)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, create("lenet5", num_classes=5))
    expected = "shape mismatches (2): ['classifier.3.weight: checkpoint (10, 500) vs model (5, 500)'"
    assert expected in str(error.value)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, create("mlp"))
    message = str(error.value)
    assert "missing keys (6): ['layers.1.weight'" in message
    assert "unexpected keys (8): ['features.0.weight'" in message


def test_save_rejects_bad_meta(tmp_path: Path, lenet: nn.Module) -> None:
    with pytest.raises(ValueError, match="meta must be JSON-serializable"):
        save_checkpoint(tmp_path / "a.pt", lenet, {"metrics": {"acc": torch.tensor(1.0)}})
    with pytest.raises(ValueError, match="meta must be a mapping"):
        save_checkpoint(tmp_path / "a.pt", lenet, [("metrics", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"meta\['model_args'\] must be create\(\) keyword arguments"):
        save_checkpoint(tmp_path / "a.pt", lenet, {"model_args": {"num_classes": 10}})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------- user model files

USER_FILE = textwrap.dedent(
    """
    from dataclasses import dataclass

    from torch import nn

    @dataclass
    class Config:  # dataclasses need the module registered in sys.modules
        width: int = 4

    def factory(width=4, num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(Config(width).width, num_classes))

    class Net(nn.Linear):
        def __init__(self):
            super().__init__(4, 2)

    NOT_CALLABLE = 3

    def not_a_module():
        return "model"
    """
)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(USER_FILE)
    return path


def test_load_model_file(user_file: Path) -> None:
    model = load_model_file(f"{user_file}:factory", width=6, num_classes=3)
    assert model(torch.rand(2, 6)).shape == (2, 3)
    assert isinstance(load_model_file(f"{user_file}:Net"), nn.Linear)


@pytest.mark.parametrize(
    ("suffix", "fragment"),
    [
        (":missing", "defines no attribute 'missing'"),
        (":NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable factory"),
        (":not_a_module", "returned a str, not a torch.nn.Module"),
        ("", "spec must look like 'path/to/file.py:factory'"),
        (":", "spec must look like 'path/to/file.py:factory'"),
    ],
)
def test_load_model_file_errors(user_file: Path, suffix: str, fragment: str) -> None:
    spec = f"{user_file}{suffix}"
    with pytest.raises(ValueError) as error:
        load_model_file(spec)
    assert fragment in str(error.value) and repr(spec) in str(error.value)


def test_load_model_file_missing_file(tmp_path: Path) -> None:
    spec = f"{tmp_path / 'absent.py'}:factory"
    with pytest.raises(ValueError, match="is not an existing .py file") as error:
        load_model_file(spec)
    assert repr(spec) in str(error.value)
