"""Seeded loaders, seeded train/validation splits and the torch CIFAR augmentation."""

from __future__ import annotations

import pytest
import torch

from robustlr.data import ImageDataset, RandomCropFlip, make_loader, make_synthetic, train_val_split


@pytest.fixture
def dataset() -> ImageDataset:
    images = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return ImageDataset(images, torch.arange(50) % 5, name="toy", classes=list("abcde"))


def epoch_labels(loader) -> list[int]:
    return torch.cat([labels for _, labels in loader]).tolist()


def positions(dataset: ImageDataset, loader) -> list[int]:
    """The dataset positions visited by ``loader``, recovered from the (distinct) images."""
    flat = dataset.images.flatten(1)
    return [int((flat == image.flatten()).all(1).nonzero()) for images, _ in loader for image in images]


# --- make_loader ----------------------------------------------------------------------------------------


def test_unshuffled_loader_keeps_dataset_order(dataset: ImageDataset) -> None:
    loader = make_loader(dataset, batch_size=16)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [16, 16, 16, 2] and len(loader) == 4
    torch.testing.assert_close(torch.cat([images for images, _ in batches]), dataset.images)
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64


def test_same_seed_same_order_different_seed_different_order(dataset: ImageDataset) -> None:
    first = positions(dataset, make_loader(dataset, 8, shuffle=True, seed=1))
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert positions(dataset, make_loader(dataset, 8, shuffle=True, seed=1)) == first
    assert positions(dataset, make_loader(dataset, 8, shuffle=True, seed=2)) != first


def test_epochs_differ_but_replay_from_the_seed(dataset: ImageDataset) -> None:
    loader = make_loader(dataset, 10, shuffle=True, seed=5)
    epochs = [epoch_labels(loader) for _ in range(2)]
    replay = make_loader(dataset, 10, shuffle=True, seed=5)
    assert epochs[0] != epochs[1] and [epoch_labels(replay) for _ in range(2)] == epochs


def test_loader_does_not_touch_the_global_rng(dataset: ImageDataset) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(make_loader(dataset, 8, shuffle=True, seed=0, augment=True))
    torch.testing.assert_close(torch.rand(3), expected)


def test_drop_last(dataset: ImageDataset) -> None:
    loader = make_loader(dataset, 16, shuffle=True, drop_last=True)
    assert len(loader) == 3 and [len(labels) for _, labels in loader] == [16, 16, 16]


def test_loader_applies_the_dataset_transform_to_batches(dataset: ImageDataset) -> None:
    dataset.transform = lambda images: 1 - images
    images, _ = next(iter(make_loader(dataset, 4)))
    torch.testing.assert_close(images, 1 - dataset.images[:4])


def test_augmented_loader_is_seeded(dataset: ImageDataset) -> None:
    def run(seed: int) -> torch.Tensor:
        return torch.cat([images for images, _ in make_loader(dataset, 16, shuffle=True, seed=seed, augment=True)])

    first = run(0)
    assert first.shape == (50, 3, 8, 8)
    torch.testing.assert_close(run(0), first)
    assert not torch.equal(run(1), first)


@pytest.mark.parametrize(
    ("argument", "value"), [("batch_size", 0), ("batch_size", 2.5), ("batch_size", True), ("seed", -1)]
)
def test_make_loader_bad_arguments(dataset: ImageDataset, argument: str, value: object) -> None:
    arguments = {"batch_size": 4, argument: value}
    with pytest.raises(ValueError, match=rf"^{argument} must be an integer >= \d+; got {value!r}$"):
        make_loader(dataset, **arguments)


def test_make_loader_needs_an_image_dataset(dataset: ImageDataset) -> None:
    with pytest.raises(ValueError, match=r"dataset must be a robustlr\.data\.ImageDataset; got TensorDataset"):
        make_loader(torch.utils.data.TensorDataset(dataset.images, dataset.labels), 4)


# --- train_val_split ------------------------------------------------------------------------------------


def test_val_split_is_disjoint_covers_and_is_seeded(dataset: ImageDataset) -> None:
    train, val = train_val_split(dataset, 0.2, seed=0)
    assert (len(train), len(val)) == (40, 10)
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(50))
    torch.testing.assert_close(val.images, dataset.images[val.indices])
    torch.testing.assert_close(train.labels, dataset.labels[train.indices])
    assert train.classes == dataset.classes and val.name == "toy"
    assert torch.equal(train_val_split(dataset, 0.2, seed=0)[1].indices, val.indices)
    assert not torch.equal(train_val_split(dataset, 0.2, seed=1)[1].indices, val.indices)


def test_split_of_a_split_indexes_the_original(dataset: ImageDataset) -> None:
    train, _ = train_val_split(dataset, 0.5, seed=0)
    inner, _ = train_val_split(train, 0.5, seed=0)
    torch.testing.assert_close(inner.images, dataset.images[inner.indices])


def test_zero_val_fraction_gives_an_empty_validation_set(dataset: ImageDataset) -> None:
    train, val = train_val_split(dataset, 0, seed=0)
    assert len(train) == 50 and len(val) == 0 and val.images.shape == (0, 3, 8, 8)


@pytest.mark.parametrize("fraction", [1, 1.0, -0.1, float("nan"), "0.1", None, True])
def test_bad_val_fraction(dataset: ImageDataset, fraction: object) -> None:
    with pytest.raises(ValueError, match=f"^val_fraction must be a number in \\[0, 1\\); got {fraction!r}$"):
        train_val_split(dataset, fraction, seed=0)


def test_split_then_load_is_reproducible() -> None:
    data = make_synthetic(n=64, shape=(1, 4, 4), num_classes=4, seed=0)
    runs = []
    for _ in range(2):
        train, _ = train_val_split(data, 0.25, seed=7)
        runs.append(epoch_labels(make_loader(train, 10, shuffle=True, seed=7)))
    assert runs[0] == runs[1] and len(runs[0]) == 48


# --- RandomCropFlip -------------------------------------------------------------------------------------


def test_no_padding_no_flip_is_identity() -> None:
    images = torch.rand(4, 3, 6, 6)
    torch.testing.assert_close(RandomCropFlip(padding=0, flip=False)(images), images)


def test_flip_only_flips_some_images_left_right() -> None:
    images = torch.rand(64, 1, 5, 5)
    out = RandomCropFlip(padding=0, seed=0)(images)
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 10 < int(flipped.sum()) < 54


def test_crop_is_a_shift_of_the_padded_image() -> None:
    image = torch.rand(3, 32, 32)
    crop = RandomCropFlip(padding=4, seed=3, flip=False)
    padded = torch.nn.functional.pad(image, [4] * 4)
    windows = {(dy, dx): padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)}
    offsets = []
    for _ in range(30):
        out = crop(image)
        assert out.shape == (3, 32, 32)
        matches = [offset for offset, window in windows.items() if torch.equal(out, window)]
        assert matches, "the output is not a 32x32 window of the padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 10


def test_batch_images_get_independent_draws_and_seeds_replay() -> None:
    images = torch.ones(32, 1, 8, 8)
    out = RandomCropFlip(padding=2, seed=0, flip=False)(images)
    zero_rows = (out == 0).all(-1).sum(dim=(1, 2))  # rows of padding that entered each crop
    assert len(set(zero_rows.tolist())) > 1
    torch.testing.assert_close(RandomCropFlip(padding=2, seed=0, flip=False)(images), out)


@pytest.mark.parametrize(("argument", "value"), [("padding", -1), ("seed", -2), ("padding", 1.5)])
def test_random_crop_flip_bad_arguments(argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{argument} must be an integer >= 0; got {value!r}$"):
        RandomCropFlip(**{argument: value})


def test_random_crop_flip_bad_shape() -> None:
    with pytest.raises(ValueError, match="images must be \\(C, H, W\\) or \\(B, C, H, W\\); got shape \\(8, 8\\)"):
        RandomCropFlip()(torch.rand(8, 8))
