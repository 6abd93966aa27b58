"""Data loading at scale: the memory of a CIFAR-shaped split held as uint8, and the throughput of a JPEG image
folder decoded by worker processes.

Run:  python benchmarks/data_loading.py memory  [--dir DIR]
      python benchmarks/data_loading.py folder  [--dir DIR] [--n 2000] [--side 256] [--image-size 224]
                                               [--workers 0 2] [--batch-size 64]

``memory`` writes a CIFAR-10-shaped ``cifar-10-batches-py`` (50000 training images 3x32x32, random) once, then
loads the training split in a fresh process and reports the bytes the dataset holds and the process's peak
resident memory above its level before loading.  ``folder`` writes ``n`` random ``side x side`` JPEGs in 10
classes once, then reads one epoch with each number of workers (evaluation view at ``image-size``, and the
augmented training view) and reports images per second.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_MEASURE_LOAD = """
import json, sys
import torch
from robustlr.data import load_dataset
def peak_kib():  # VmHWM: this process's own high-water mark (ru_maxrss keeps the parent's across exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
before = peak_kib()
data = load_dataset("cifar10", "train", root=sys.argv[1])
after = peak_kib()
stored = getattr(data, "pixels", None)
stored = data.images if stored is None else stored
print(json.dumps({"stored_dtype": str(stored.dtype), "stored_bytes": stored.nbytes,
                  "peak_rss_above_start_bytes": (after - before) * 1024}))
"""


def write_cifar_like(directory: Path, n_train: int = 50000, seed: int = 0) -> Path:
    """``directory/cifar-10-batches-py`` with five training batches and a test batch of random images."""
    target = directory / "cifar-10-batches-py"
    if (target / "test_batch").is_file():
        return directory
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = n_train // 5
    for name, count in [*((f"data_batch_{k}", per) for k in range(1, 6)), ("test_batch", per)]:
        batch = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, count).tolist()}
        (target / name).write_bytes(pickle.dumps(batch, protocol=4))
    return directory


def cifar_memory(directory: Path, python: str = sys.executable, env: dict | None = None) -> dict:
    """Bytes held and peak RSS of loading the CIFAR-shaped training split, measured in a fresh process."""
    root = write_cifar_like(directory)
    done = subprocess.run([python, "-c", _MEASURE_LOAD, str(root)], capture_output=True, text=True, check=True,
                          env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_jpeg_folder(directory: Path, n: int = 2000, side: int = 256, classes: int = 10, seed: int = 0) -> Path:
    """``directory/{train,val}/class_k/*.jpg``: ``n`` smooth random ``side x side`` JPEGs (quality 90) for
    training, ``n // 10`` for validation."""
    from PIL import Image

    if (directory / "val").is_dir():
        return directory
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", max(n // 10, classes))):
        for index in range(count):
            folder = directory / split / f"class_{index % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
            noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (side, side, 3)), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(folder / f"{index:06d}.jpg", quality=90)
    return directory


def _cpu_seconds() -> tuple[float, float]:
    """CPU time of this process, and of its children that have exited (the loader's workers, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def folder_throughput(root: Path, image_size: int, workers: int, batch_size: int = 64,
                      augment: bool = False) -> dict[str, float]:
    """One epoch of the training split through :func:`robustlr.data.make_loader` (worker start-up included):
    images per second of wall time, and milliseconds of CPU time per image in the main process and in the
    workers (on a shared machine the wall time depends on the other load, the CPU times much less; with idle
    cores the rate is bounded by ``1 / main`` and ``workers / worker``)."""
    from robustlr.data import load_dataset, make_loader

    data = load_dataset("folder", "train", root=root, image_size=image_size)
    start, (main_cpu, worker_cpu) = time.perf_counter(), _cpu_seconds()
    loader = make_loader(data, batch_size, shuffle=True, seed=0, augment=augment, workers=workers)
    count = sum(len(labels) for _, labels in loader)
    del loader  # shuts the workers down, so that their CPU time is counted
    gc.collect()
    seconds, (main_end, worker_end) = time.perf_counter() - start, _cpu_seconds()
    return {"images_per_second": count / seconds, "main_ms_per_image": (main_end - main_cpu) / count * 1e3,
            "worker_ms_per_image": (worker_end - worker_cpu) / count * 1e3}


def run_all_rows(quick: bool, directory: Path | None = None) -> tuple[dict[str, float], list[str]]:
    """The rows of ``make bench``: uint8 storage of a CIFAR-shaped split (bytes and peak RSS over a float32 copy of
    it, 4 bytes per value), and the images/s of a JPEG folder (``quick``: 200, else 1000 images of 256×256 at 224)
    with 2 workers over 0."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) if directory is None else directory
        memory = cifar_memory(base / "cifar")
        float_bytes = 4 * memory["stored_bytes"] // (1 if memory["stored_dtype"] == "torch.uint8" else 4)
        n = 200 if quick else 1000
        root = write_jpeg_folder(base / "jpeg", n, 256)
        rates = {workers: folder_throughput(root, 224, workers) for workers in (0, 2)}
    rows = {"uint8_vs_float32_stored_bytes": memory["stored_bytes"] / float_bytes,
            "uint8_vs_float32_peak_rss": memory["peak_rss_above_start_bytes"] / float_bytes,
            "folder_workers2_vs_workers0_images_per_s": rates[2]["images_per_second"] / rates[0]["images_per_second"]}
    extras = [f"CIFAR-shaped training split (50000×3×32×32) stored as {memory['stored_dtype']}: "
              f"{memory['stored_bytes'] / 1e6:.1f} MB (float32 would hold {float_bytes / 1e6:.1f} MB), peak RSS of "
              f"loading {memory['peak_rss_above_start_bytes'] / 1e6:.1f} MB",
              f"{n} JPEGs 256×256 at --image-size 224: " + ", ".join(
                  f"{workers} workers {got['images_per_second']:.0f} images/s (CPU per image: main "
                  f"{got['main_ms_per_image']:.2f} ms, workers {got['worker_ms_per_image']:.2f} ms)"
                  for workers, got in rates.items())]
    return rows, extras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "folder"])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/robustlr-bench-data"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.what == "memory":
        print(json.dumps(cifar_memory(args.dir / "cifar"), indent=2))
        return
    root = write_jpeg_folder(args.dir / f"jpeg-{args.n}-{args.side}", args.n, args.side)
    for augment in (False, True):
        for workers in args.workers:
            got = folder_throughput(root, args.image_size, workers, args.batch_size, augment)
            view = "training view (random-resized crop, flip)" if augment else "evaluation view (resize, crop)"
            print(f"{args.n} JPEGs {args.side}x{args.side} -> {args.image_size}, {view}, workers={workers}: "
                  f"{got['images_per_second']:.0f} images/s; CPU per image: main process "
                  f"{got['main_ms_per_image']:.2f} ms, workers {got['worker_ms_per_image']:.2f} ms")


if __name__ == "__main__":
    main()
