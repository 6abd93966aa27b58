"""Data at scale: image folders read lazily with Pillow, tensor files, uint8 storage of the built-in datasets,
streaming loaders with worker processes, per-sample seeded augmentation and sharded fetching.

The folders are generated here with Pillow: JPEGs and PNGs of odd sizes in three classes, a grayscale and an
RGBA image among them, and (where a test needs one) a corrupt file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FMNIST_DIR, cli_error, require
from robustlr.cli import main
from robustlr.data import (
    FolderDataset,
    ImageDataset,
    load_dataset,
    load_digits,
    make_loader,
    read_idx,
    read_tensor_file,
    train_val_split,
)
from robustlr.data.augment import CROP_DRAWS, CROP_RATIO, CROP_SCALE, resized_crop_box
from robustlr.data.pil_images import EVAL_RESIZE, evaluation_view, read_rgb
from robustlr.data.seeding import uniforms
from robustlr.evaluation.data import iter_batches
from robustlr.train import TrainConfig, load_trained, train
from robustlr.train.batches import TrainBatches
from robustlr.train.distributed import block

CLASSES = ("ant", "bee", "cow")  # written in another order below: the classes are sorted by name


def _write_image(path: Path, rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> None:
    """A smooth random image (JPEG-friendly): a coarse random grid upsampled, plus a class-free gradient."""
    width, height = size
    coarse = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    image.save(path)


def _tree(root: Path, sizes: dict[str, int], uniform: int | None, seed: int) -> Path:
    """``root/{train,val}/<class>/`` with ``sizes[split]`` images per class (JPEG and PNG alternating; one
    grayscale and one RGBA PNG in the training split), all ``uniform × uniform`` or of odd sizes."""
    rng = np.random.default_rng(seed)
    for split, count in sizes.items():
        for label, name in enumerate(reversed(CLASSES)):
            directory = root / split / name
            directory.mkdir(parents=True)
            for index in range(count):
                size = (uniform, uniform) if uniform else (int(rng.integers(13, 41)), int(rng.integers(13, 41)))
                mode = "L" if (split, label, index) == ("train", 0, 1) else "RGBA" if (split, label, index) == (
                    "train", 1, 3) else "RGB"
                suffix = "jpg" if index % 2 == 0 and mode == "RGB" else "png"
                _write_image(directory / f"{index:02d}.{suffix}", rng, size, mode)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    """Odd sizes (13 to 40 pixels a side), 8 training and 3 validation images per class."""
    return _tree(tmp_path_factory.mktemp("odd"), {"train": 8, "val": 3}, None, seed=0)


@pytest.fixture(scope="module")
def square(tmp_path_factory) -> Path:
    """All 12 x 12, 16 training and 4 validation images per class."""
    return _tree(tmp_path_factory.mktemp("square"), {"train": 16, "val": 4}, 12, seed=1)


# --- the folder dataset ---------------------------------------------------------------------------------


def test_classes_are_sorted_labels_follow_directories_and_nothing_is_decoded(odd):
    data = load_dataset("folder", "train", root=odd, image_size=16)
    assert isinstance(data, FolderDataset) and data.classes == sorted(CLASSES) and len(data) == 24
    names = [data.path(i).parent.name for i in range(len(data))]
    assert names == sorted(names) and [data.classes[label] for label in data.labels.tolist()] == names
    assert all(data.path(i).suffix in (".jpg", ".png") for i in range(len(data)))  # notes.txt is skipped
    held = len(pickle.dumps(data))
    assert held < 4096, held  # paths and labels only: 24 images of 16 x 16 RGB as float32 would be 73 kB
    image, label = data[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert label.item() == data.labels[5].item() and len(pickle.dumps(data)) == held  # nothing cached
    test = load_dataset("folder", "test", root=odd, image_size=16)  # val/ is the test split
    assert len(test) == 9 and test.classes == data.classes and test.directory.name == "val"


def test_grayscale_and_rgba_become_rgb_explicitly(tmp_path):
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    gray.save(tmp_path / "gray.png")
    rgb = np.asarray(read_rgb(tmp_path / "gray.png"))
    assert rgb.shape == (3, 4, 3) and (rgb == np.asarray(gray)[:, :, None]).all()
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [9, 9, 9, 0]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(read_rgb(tmp_path / "rgba.png")).astype(int)
    expected = np.round(rgba[..., :3] * (rgba[..., 3:] / 255)).astype(int)  # composited over black
    assert np.abs(out - expected).max() <= 1 and (out[0, 2] == 0).all()
    Image.fromarray((np.arange(6, dtype=np.uint16).reshape(2, 3) * 13000)).save(tmp_path / "gray16.png")
    assert (np.asarray(read_rgb(tmp_path / "gray16.png"))[..., 0] == (np.arange(6).reshape(2, 3) * 13000) >> 8).all()
    Image.fromarray(np.ones((2, 2), dtype=np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match=r"float\.tiff: image mode 'F' .* convert it to an 8-bit PNG or JPEG"):
        read_rgb(tmp_path / "float.tiff")


def test_evaluation_view_resizes_the_shorter_side_and_centre_crops():
    size = 16
    side = round(size * EVAL_RESIZE)  # 18: the image is already at the resized size, only the crop acts
    pixels = np.random.default_rng(0).integers(0, 256, (side + 6, side, 3), dtype=np.uint8)  # 18 wide, 24 high
    out = np.asarray(evaluation_view(Image.fromarray(pixels), size))
    top, left = round((side + 6 - size) / 2), round((side - size) / 2)
    assert out.shape == (16, 16, 3) and (out == pixels[top : top + size, left : left + size]).all()
    wide = evaluation_view(Image.fromarray(np.zeros((40, 100, 3), dtype=np.uint8)), size)
    assert wide.size == (16, 16)


def test_random_resized_crop_boxes_follow_the_scale_and_ratio_ranges():
    height, width = 30, 50
    draws = uniforms((0,), range(300), CROP_DRAWS)
    flips = 0
    for row in draws:
        (left, top, right, bottom), flip = resized_crop_box(height, width, row)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert CROP_SCALE[0] * 0.8 <= w * h / (height * width) <= CROP_SCALE[1]  # rounding of w and h
        assert CROP_RATIO[0] * 0.8 <= w / h <= CROP_RATIO[1] * 1.25
        flips += flip
    assert 100 < flips < 200
    never_fits = np.tile([1 - 1e-9, 1 - 1e-9, 0.5, 0.5], 10).tolist() + [0.9]  # whole area at ratio 4/3, too wide
    assert resized_crop_box(40, 40, np.array(never_fits)) == ((0, 0, 40, 40), False)  # fallback: the whole image


def test_odd_sizes_without_image_size_name_two_files_and_suggest_it(odd):
    with pytest.raises(ValueError, match=r"images differ in size: .*ant/00\.jpg is \d+x\d+, .*ant/01\.png is \d+x\d+ "
                                         r".*image_size=N \(CLI: --image-size N\)"):
        load_dataset("folder", "train", root=odd)


def test_layout_errors_name_the_directory(tmp_path):
    with pytest.raises(ValueError, match=r"has no train/ directory for the train split"):
        load_dataset("folder", "train", root=tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"class directory .*train/a holds no image"):
        load_dataset("folder", "train", root=tmp_path)
    _write_image(tmp_path / "train" / "a" / "x.png", np.random.default_rng(0), (8, 8))
    _write_image(tmp_path / "train" / "loose.png", np.random.default_rng(0), (8, 8))
    with pytest.raises(ValueError, match=r"train/loose\.png: an image outside any class directory"):
        load_dataset("folder", "train", root=tmp_path)
    (tmp_path / "train" / "loose.png").unlink()
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    _write_image(tmp_path / "val" / "zebra" / "z.png", np.random.default_rng(0), (8, 8))
    with pytest.raises(ValueError, match=r"classes that .*train lacks: zebra"):
        load_dataset("folder", "test", root=tmp_path)
    with pytest.raises(ValueError, match=r"reads your own data at root .* must be given"):
        load_dataset("folder", "train")
    with pytest.raises(ValueError, match=r"options \['n'\] are not taken by name='folder'"):
        load_dataset("folder", "train", root=tmp_path, n=3)


def test_a_corrupt_file_is_an_error_naming_it_early_or_when_fetched(square, tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "val"):
        for source in (square / split).rglob("*.*"):
            target = root / source.relative_to(square)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    bad = root / "train" / "bee" / "99.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"bee/99\.jpg: not a readable image"):
        FolderDataset(root, "train")  # without image_size the headers are read at once
    data = FolderDataset(root, "train", image_size=8)  # with it, nothing is read until fetched
    for workers in (0, 2):
        with pytest.raises(ValueError, match=r"^/.*bee/99\.jpg: not a readable image"):
            list(make_loader(data, 5, workers=workers))


# --- loaders: workers, per-sample augmentation, shards ----------------------------------------------------


def _epochs(data: ImageDataset, workers: int, epochs: int = 2, **options) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = make_loader(data, 7, shuffle=True, seed=3, augment=True, workers=workers, **options)
    return [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
            for batches in (list(loader) for _ in range(epochs))]


def test_workers_give_the_same_batches_as_the_main_process(odd):
    data = load_dataset("folder", "train", root=odd, image_size=16)
    assert data.workers >= 1  # min(4, CPUs) by default
    serial, parallel = _epochs(data, 0), _epochs(data, 2)
    for (x0, y0), (x2, y2) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(serial[0][0], serial[1][0])  # a new order and augmentation every epoch


def _fetch(data: ImageDataset, positions: list[int], augment: tuple[int, ...] | None) -> torch.Tensor:
    images, _, levels = data.fetch(torch.tensor(positions), augment)
    assert images.dtype == torch.uint8 and levels == 255  # what travels between processes: a quarter of float32
    return images.float() / levels


def test_a_samples_augmentation_depends_on_the_seed_and_its_index_only(odd, square):
    for data in (load_dataset("folder", "train", root=odd, image_size=16),
                 load_dataset("folder", "train", root=square)):
        together, alone = _fetch(data, [3, 5, 9], (11, 0)), _fetch(data, [5], (11, 0))
        assert torch.equal(together[1], alone[0])
        assert not torch.equal(_fetch(data, [5], (12, 0)), alone)
        assert torch.equal(_fetch(data, [5], None), data[[5]][0])
    part = data.subset([5, 9])  # (the square folder) keys are indices in the source: a subset augments alike
    assert torch.equal(_fetch(part, [0], (11, 0)), alone) and part.keys(torch.tensor([1])) == [9]
    memory = ImageDataset(torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).reshape(2, 3, 8, 8), torch.tensor([0, 1]),
                          name="m", classes=["a", "b"])
    images, _, levels = memory.fetch(torch.tensor([0, 1]), (4, 0))  # crop and flip on uint8, then / 255 ...
    memory.transform = lambda x: x  # ... equals crop and flip of the float32 images (the transform's path)
    floats, _, none = memory.fetch(torch.tensor([0, 1]), (4, 0))
    assert images.dtype == torch.uint8 and none is None and torch.equal(images.float() / levels, floats)


def test_two_shards_fetch_only_their_samples_and_join_to_the_single_process_batches(square, monkeypatch):
    data = load_dataset("folder", "train", root=square, workers=0)
    fetched: list[list[int]] = []
    original = FolderDataset.fetch

    def recording(self, positions, augment):
        fetched.append(positions.tolist())
        return original(self, positions, augment)

    monkeypatch.setattr(FolderDataset, "fetch", recording)
    single = list(TrainBatches(data, 10, True, lambda n: range(n)).epoch(1, seed=5))
    shards = [list(TrainBatches(data, 10, True, lambda n, r=rank: block(n, r, 2)).epoch(1, seed=5)) for rank in (0, 1)]
    assert len(single) == len(shards[0]) == 5 and [len(b.y) for b in single] == [10, 10, 10, 10, 8]
    for whole, first, second in zip(single, *shards, strict=True):
        assert torch.equal(torch.cat([first.x, second.x]), whole.x)
        assert torch.equal(torch.cat([first.y, second.y]), whole.y)
        assert torch.equal(torch.cat([first.context.ids, second.context.ids]), whole.context.ids)
        assert first.context.positions.tolist() == list(range(len(first.y)))
        assert second.context.positions[0] == len(first.y) and second.context.global_size == len(whole.y)
    sizes = [len(positions) for positions in fetched]
    assert sizes == [10, 10, 10, 10, 8] + [5, 5, 5, 5, 4] * 2  # each shard fetched its half, never the whole batch
    # the order and augmentation are make_loader's first pass with the epoch's seed
    loader = make_loader(data, 10, shuffle=True, seed=5, augment=True)
    assert all(torch.equal(x, batch.x) for (x, _), batch in zip(loader, single, strict=True))


def test_a_resumed_epoch_skips_its_first_batches_without_fetching_them(square, monkeypatch):
    data = load_dataset("folder", "train", root=square, workers=0)
    batches = TrainBatches(data, 12, True, lambda n: range(n))
    full = list(batches.epoch(2, seed=9))
    calls = []
    monkeypatch.setattr(FolderDataset, "fetch", lambda self, positions, augment, original=FolderDataset.fetch: (
        calls.append(len(positions)), original(self, positions, augment))[1])
    resumed = list(batches.epoch(2, seed=9, start=2))
    assert [b.context.index for b in resumed] == [2, 3] and len(calls) == 2
    assert all(torch.equal(a.x, b.x) and a.context.epoch == 2 for a, b in zip(full[2:], resumed, strict=True))


def test_the_split_and_subsets_of_a_folder_stay_lazy_and_evaluation_streams_them(odd):
    data = load_dataset("folder", "train", root=odd, image_size=16, workers=2)
    train, val = train_val_split(data, 0.25, seed=0)
    assert isinstance(val, FolderDataset) and len(val) == 6 and val.workers == 2
    assert [val.path(i) for i in range(len(val))] == [data.path(i) for i in val.indices.tolist()]
    batches, total = iter_batches(val, 4, None)
    got = list(batches)
    assert total == 6 and [len(y) for _, y in got] == [4, 2]
    assert torch.equal(torch.cat([x for x, _ in got]), val.images) and torch.equal(torch.cat([y for _, y in got]),
                                                                                 val.labels)


# --- tensor files -----------------------------------------------------------------------------------------


def test_tensor_files_npz_nhwc_uint8_and_pt_float(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train_images=nhwc, train_labels=np.arange(6) % 3, test_images=nhwc[:2],
             test_labels=np.array([0, 4]))
    train = load_dataset("file", "train", root=tmp_path / "d.npz")
    assert train.pixels.dtype == torch.uint8 and train.image_shape == (3, 5, 4)
    assert torch.equal(train.images, torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255)
    assert train.classes == [f"class_{k}" for k in range(5)]  # 1 + the largest label of both splits
    floats = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    torch.save({"test_images": floats, "test_labels": torch.tensor([1, 0, 1, 0]), "classes": ["no", "yes"]},
               tmp_path / "d.pt")
    test = read_tensor_file(tmp_path / "d.pt", "test")
    assert test.pixels.dtype == torch.float32 and test.classes == ["no", "yes"]
    assert torch.equal(test[:4][0], floats.float())
    with pytest.raises(ValueError, match=r"d\.pt: no train split: train_images and train_labels missing \(it holds "
                                         r"classes, test_images, test_labels\)"):
        read_tensor_file(tmp_path / "d.pt", "train")


@pytest.mark.parametrize(("content", "message"), [
    ({"test_images": np.full((2, 1, 2, 2), 1.5), "test_labels": np.zeros(2, int)}, r"finite values in \[0, 1\]"),
    ({"test_images": np.full((2, 1, 2, 2), np.nan), "test_labels": np.zeros(2, int)}, r"finite values in \[0, 1\]"),
    ({"test_images": np.zeros((2, 4, 4), np.uint8), "test_labels": np.zeros(2, int)}, r"test_images must be 4-d"),
    ({"test_images": np.zeros((2, 1, 4, 4), np.int32), "test_labels": np.zeros(2, int)}, r"uint8 .* or floating"),
    ({"test_images": np.zeros((2, 1, 4, 4), np.uint8), "test_labels": np.zeros(3, int)}, r"of length 2"),
    ({"test_images": np.zeros((2, 1, 4, 4), np.uint8), "test_labels": np.array([0, -1])}, r"integers >= 0"),
])
def test_bad_tensor_files_name_the_file_and_the_array(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(ValueError, match=rf"bad\.npz: .*{message}"):
        read_tensor_file(tmp_path / "bad.npz", "test")


def test_tensor_file_paths_are_checked(tmp_path):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"must be a \.npz or \.pt file of arrays; .*x\.csv has neither suffix"):
        read_tensor_file(tmp_path / "x.csv", "test")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"broken\.npz: not a readable \.npz file"):
        read_tensor_file(tmp_path / "broken.npz", "test")


# --- uint8 storage of the built-in datasets ----------------------------------------------------------------


def test_built_in_datasets_are_stored_as_uint8_and_fetch_the_old_float_values():
    if not Path(FMNIST_DIR).is_dir():
        pytest.fail(f"{FMNIST_DIR} is missing: install it with `apt-get install dataset-fashion-mnist`")
    test = load_dataset("fashion-mnist", "test", root=FMNIST_DIR)
    assert test.pixels.dtype == torch.uint8 and test.pixels.nbytes == 10000 * 28 * 28  # a quarter of float32
    old = torch.from_numpy(read_idx(Path(FMNIST_DIR) / "t10k-images-idx3-ubyte.gz")).float().div_(255)[:, None]
    images, labels = test[torch.arange(100, 300)]
    assert images.dtype == torch.float32 and labels.dtype == torch.int64 and torch.equal(images, old[100:300])
    assert torch.equal(test.images, old) and torch.equal(next(iter(make_loader(test, 64)))[0], old[:64])
    torch.testing.assert_close(test.mean, old.mean(dim=(0, 2, 3)), rtol=0, atol=1e-6)  # from the histogram
    torch.testing.assert_close(test.std, old.std(dim=(0, 2, 3)), rtol=0, atol=1e-6)
    part = test.subset(range(10))
    assert part.pixels.dtype == torch.uint8 and torch.equal(part.images, old[:10])


def test_digits_are_stored_as_uint8_with_sixteen_levels():
    sklearn = require("sklearn", "the digits dataset needs scikit-learn, part of the dev extra")
    train, test = load_digits("train"), load_digits("test")
    assert train.pixels.dtype == torch.uint8 and train.levels == 16 and int(train.pixels.max()) == 16
    old = torch.as_tensor(sklearn.datasets.load_digits().images, dtype=torch.float32).div_(16).unsqueeze(1)
    rows = sorted(image.tobytes() for image in old.flatten(1).numpy())
    fetched = [image.tobytes() for split in (train, test) for image in split[:len(split)][0].flatten(1).numpy()]
    assert sorted(fetched) == rows  # the same float32 images as dividing the float array by 16


def test_uint8_images_above_the_levels_are_refused():
    with pytest.raises(ValueError, match=r"images must lie in \[0, 16\] \(levels\); got a maximum of 17"):
        ImageDataset(torch.full((1, 1, 2, 2), 17, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), name="x",
                     classes=["a"], levels=16)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        ImageDataset(torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, dtype=torch.long), name="x", classes=["a"])


# --- the command line -------------------------------------------------------------------------------------


def test_train_and_evaluate_on_image_folders_from_the_command_line(square, odd, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "folder", "--data-root", str(odd), "--image-size", "12", "--workers", "0",
                 "--model", "mlp", "--method", "dense",
                 "--epochs", "1", "--batch-size", "16", "--augment", "--eval-n", "8", "--eval-eps", "0", "0.05",
                 "--eval-steps", "1", "--eval-batch-size", "8", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation"]["last"]["n"] == 8
    assert summary["data"] == {"name": "folder", "classes": sorted(CLASSES), "image_shape": [3, 12, 12]}
    assert summary["config"]["image_size"] == 12
    line = cli_error(["train", "--data", "digits", "--image-size", "8", "--no-progress", "--out", str(tmp_path / "x")],
                     capsys)
    assert "image_size applies to data='folder' only" in line or "--image-size applies" in line, line
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--data", "folder", "--data-root", str(odd),
                 "--image-size", "12", "--workers", "2", "--n", "0", "--attack", "fgsm", "--eps", "0.05",
                 "--steps", "1", "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert report["result"]["n"] == 9  # every image of val/, resized


@pytest.mark.slow
def test_two_processes_train_on_a_folder_as_one_process(square, tmp_path, capfd, monkeypatch):
    """Augmented batches decoded by each rank's workers from its own shard: the same weights as one process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = {"data": "folder", "data_root": str(square), "model": "mlp", "method": "dense", "epochs": 2,
                "batch_size": 16, "augment": True, "eval_n": 8, "eval_eps": (0.0,), "eval_steps": 1}
    train(TrainConfig(**settings, out=str(tmp_path / "single")), progress=False)
    argv = ["train", "--data", "folder", "--data-root", str(square), "--model", "mlp", "--method", "dense",
            "--epochs", "2", "--batch-size", "16", "--augment", "--eval-n", "8", "--eval-eps", "0", "--eval-steps", "1"]
    assert main([*argv, "--nproc", "2", "--no-progress", "--out", str(tmp_path / "ddp")]) == 0
    single, ddp = (load_trained(tmp_path / run / "last.pt")[0].state_dict() for run in ("single", "ddp"))
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-5, msg=key)


def test_command_line_data_errors_are_one_line(odd, tmp_path, capsys):
    line = cli_error(["evaluate", "--model", "mlp", "--data", "folder", "--data-root", str(odd), "--steps", "1",
                      "--no-progress", "--out", str(tmp_path / "a")], capsys)
    assert "images differ in size" in line and "--image-size N" in line
    line = cli_error(["evaluate", "--model", "mlp", "--data", "mnist", "--image-size", "8", "--steps", "1",
                      "--no-progress", "--out", str(tmp_path / "b")], capsys)
    assert "--image-size applies to --data folder only" in line
    line = cli_error(["evaluate", "--model", "mlp", "--data", "file", "--data-root", str(tmp_path / "none.npz"),
                      "--steps", "1", "--no-progress", "--out", str(tmp_path / "c")], capsys)
    assert "none.npz does not exist" in line
