"""Data sets kept on the training device: CIFAR-10/100 from local files, a synthetic set, and
the CPU-sized real benchmarks MNIST-1D and 8x8 digits (:mod:`sdesam.train.cpu_data`).

Images are stored once as ``uint8`` tensors ``[N, 3, 32, 32]`` (MNIST-1D signals as float32
``[N, 1, 40]``, digits as float32 ``[N, 1, 8, 8]``) on the device; a training batch is gathered
by index and augmented there (:mod:`sdesam.train.augment`), so no per-image Python work and no
host-to-device copy happens inside the loop. Nothing is ever downloaded: CIFAR is read from a
directory holding the official python-batch files, MNIST-1D is generated from its templates.
A validation split and symmetric label noise are added by :mod:`sdesam.train.splits`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterator

import torch

from sdesam.train import cpu_data
from sdesam.train.datasets import ImageDataset, channel_statistics
from sdesam.validation import InputError, positive_int

__all__ = ["DATASETS", "FILE_DATASETS", "ImageDataset", "batch_indices", "channel_statistics",
           "epoch_generator", "eval_batches", "find_cifar_folder", "load_cifar", "load_dataset",
           "shard", "synthetic_dataset", "write_cifar"]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "synthetic", "mnist1d", "digits")
FILE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100")
"""The data sets read from files the user provides (``data_dir`` required)."""

# file names of the official python versions, and the folder the archives unpack into
_CIFAR_FILES: dict[str, dict[str, object]] = {
    "cifar10": {"folder": "cifar-10-batches-py",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "labels": b"labels", "names": b"label_names"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"],
                 "meta": "meta", "labels": b"fine_labels", "names": b"fine_label_names"},
}


def load_dataset(name: str, data_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 seed: int = 0, synthetic_size: tuple[int, int] = (5000, 1000)) -> ImageDataset:
    """Load ``name`` (one of :data:`DATASETS`) onto ``device``.

    CIFAR needs ``data_dir``: the folder holding the python-batch files, or its parent (the
    folder the official archive was unpacked in). ``synthetic`` is generated from ``seed`` with
    ``synthetic_size = (n_train, n_test)`` images. ``mnist1d`` is generated locally and cached
    under ``data_dir`` (default :data:`sdesam.train.cpu_data.DEFAULT_DATA_DIR`); ``digits`` is
    scikit-learn's bundled set with a fixed stratified test split.
    """
    if name not in DATASETS:
        raise InputError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    if name == "synthetic":
        n_train, n_test = synthetic_size
        return synthetic_dataset(n_train, n_test, seed=seed).to(device)
    if name == "mnist1d":
        return cpu_data.load_mnist1d(data_dir).to(device)
    if name == "digits":
        return cpu_data.load_digits().to(device)
    if data_dir is None:
        raise InputError(f"data_dir is required for {name}: the folder with the official "
                         f"python-batch files (nothing is downloaded)")
    return load_cifar(name, data_dir).to(device)


def find_cifar_folder(name: str, data_dir: str | Path) -> Path:
    """The folder holding ``name``'s python-batch files: ``data_dir`` itself or its official
    sub-folder. Raises a ValueError naming every missing file."""
    spec = _CIFAR_FILES[name]
    files = [*spec["train"], *spec["test"], spec["meta"]]  # type: ignore[misc]
    root = Path(data_dir)
    candidates = [root, root / str(spec["folder"])]
    for folder in candidates:
        if all((folder / f).is_file() for f in files):
            return folder
    folder = max(candidates, key=lambda c: sum((c / f).is_file() for f in files))
    missing = [str(folder / f) for f in files if not (folder / f).is_file()]
    raise InputError(
        f"data_dir {str(root)!r} does not hold the {name} python-batch files; missing: "
        f"{', '.join(missing)}. Unpack the official archive (the python version) there; "
        f"nothing is downloaded at run time."
    )


def load_cifar(name: str, data_dir: str | Path) -> ImageDataset:
    """Read CIFAR-10 or CIFAR-100 (fine labels) from the official python-batch files."""
    if name not in _CIFAR_FILES:
        raise InputError(f"name must be cifar10 or cifar100; got {name!r}")
    spec = _CIFAR_FILES[name]
    folder = find_cifar_folder(name, data_dir)
    train_x, train_y = _read_batches(folder, spec["train"], spec["labels"])  # type: ignore[arg-type]
    test_x, test_y = _read_batches(folder, spec["test"], spec["labels"])  # type: ignore[arg-type]
    meta = _unpickle(folder / str(spec["meta"]))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["names"]]]
    mean, std = channel_statistics(train_x)
    return ImageDataset(name, train_x, train_y, test_x, test_y, len(names), names, mean, std)


def _unpickle(path: Path) -> dict:
    """One python-batch file (a pickled dict with bytes keys); an InputError naming the file
    when it cannot be read or is not such a dict (truncated or corrupt)."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except OSError as error:
        raise InputError(f"CIFAR file {str(path)!r} cannot be read: {error.strerror}") from None
    except Exception as error:  # pickle raises many types on damaged input
        raise InputError(f"CIFAR file {str(path)!r} is truncated or corrupt (not a python-batch "
                         f"pickle: {type(error).__name__}: {error}); re-extract it from the "
                         f"official archive") from None
    if not isinstance(batch, dict):
        raise InputError(f"CIFAR file {str(path)!r} is not a python-batch file (it holds a "
                         f"{type(batch).__name__}, not a dict)")
    return batch


def _read_batches(folder: Path, files: list[str], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the images ([N, 3, 32, 32] uint8) and labels of several batch files."""
    images, labels = [], []
    for file in files:
        batch = _unpickle(folder / file)
        if b"data" not in batch or label_key not in batch:
            raise InputError(f"CIFAR file {str(folder / file)!r} lacks the keys b'data' and "
                             f"{label_key!r}")
        data = torch.as_tensor(batch[b"data"], dtype=torch.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise InputError(f"CIFAR file {str(folder / file)!r}: b'data' must be uint8 "
                             f"[n, 3072]; got shape {tuple(data.shape)} (truncated or corrupt?)")
        label = torch.as_tensor(list(batch[label_key]), dtype=torch.int64)
        if len(label) != len(data):
            raise InputError(f"CIFAR file {str(folder / file)!r} holds {len(data)} images but "
                             f"{len(label)} labels (truncated or corrupt?)")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return torch.cat(images), torch.cat(labels)


def write_cifar(folder: str | Path, name: str, train: tuple[torch.Tensor, torch.Tensor],
                test: tuple[torch.Tensor, torch.Tensor], class_names: list[str]) -> Path:
    """Write (images uint8 [N, 3, 32, 32], labels) pairs as ``name``'s official python-batch
    files in ``folder`` (training images split over the five CIFAR-10 batches): for small test
    fixtures and for bringing other 32x32 data into the loader."""
    if name not in _CIFAR_FILES:
        raise InputError(f"name must be cifar10 or cifar100; got {name!r}")
    spec = _CIFAR_FILES[name]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_files: list[str] = spec["train"]  # type: ignore[assignment]
    chunks = zip(torch.tensor_split(train[0], len(train_files)),
                 torch.tensor_split(train[1], len(train_files)))
    for file, (images, labels) in [*zip(train_files, chunks), (spec["test"][0], test)]:  # type: ignore[index]
        batch = {b"data": images.reshape(len(images), -1).numpy(),
                 spec["labels"]: [int(v) for v in labels]}
        with open(folder / file, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / str(spec["meta"]), "wb") as handle:
        pickle.dump({spec["names"]: [n.encode() for n in class_names]}, handle)
    return folder




def synthetic_dataset(n_train: int = 5000, n_test: int = 1000, num_classes: int = 10,
                      seed: int = 0, noise: float = 0.35) -> ImageDataset:
    """A CIFAR-shaped set with learnable structure, for demos, tests and benchmarks.

    Each class has a smooth random colour template (a 4x4 pattern upsampled to 32x32); an image
    is its class template, randomly shifted by up to 4 pixels and flipped, plus pixel noise of
    relative size ``noise``. A small network learns it in an epoch or two but does not reach
    100% at once, so optimizers can be told apart.
    """
    for arg, value in (("n_train", n_train), ("n_test", n_test), ("num_classes", num_classes)):
        positive_int(arg, value)
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=generator)
    templates = torch.nn.functional.interpolate(coarse, size=(40, 40), mode="bicubic",
                                                align_corners=False)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (count,), generator=generator)
        dy = torch.randint(9, (count,), generator=generator)
        dx = torch.randint(9, (count,), generator=generator)
        rows = dy[:, None] + torch.arange(32)
        cols = dx[:, None] + torch.arange(32)
        flip = torch.rand(count, generator=generator) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        base = templates[labels[:, None, None, None], torch.arange(3)[None, :, None, None],
                         rows[:, None, :, None], cols[:, None, None, :]]
        pixels = base + noise * 2.5 * torch.randn(base.shape, generator=generator)
        images = (128 + 40 * pixels).round().clamp(0, 255).to(torch.uint8)
        return images, labels

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    mean, std = channel_statistics(train_x)
    names = [f"class_{k}" for k in range(num_classes)]
    return ImageDataset("synthetic", train_x, train_y, test_x, test_y, num_classes, names, mean, std)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator fixed by (seed, epoch, stream): every rank and every resumed run draws
    the same shuffle and augmentation for a given epoch, with no generator state to save."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def batch_indices(n: int, batch_size: int, generator: torch.Generator,
                  drop_last: bool = True) -> list[torch.Tensor]:
    """A random permutation of ``range(n)`` cut into global batches of ``batch_size``.

    The last incomplete batch is dropped by default, so every step sees the same batch size
    (m-SAM needs ``m | B`` at every step, and the step count per epoch is fixed).
    """
    positive_int("batch_size", batch_size)
    if drop_last and batch_size > n:
        raise InputError(f"batch_size must be at most the {n} training samples; got {batch_size}")
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The contiguous part of a global batch that ``rank`` of ``world_size`` processes
    (the data-parallel split: equal parts, so DDP's gradient average is the global mean)."""
    if len(batch) % world_size:
        raise InputError(f"batch size {len(batch)} must be divisible by the world size {world_size}")
    per_rank = len(batch) // world_size
    return batch[rank * per_rank:(rank + 1) * per_rank]


def eval_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Index batches covering ``rank``'s strided share of ``range(n)`` in order (every sample
    is evaluated exactly once across the ranks)."""
    indices = torch.arange(rank, n, world_size)
    yield from indices.split(batch_size)
