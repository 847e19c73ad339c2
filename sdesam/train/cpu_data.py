"""Real benchmark data small enough for a CPU: MNIST-1D and scikit-learn's 8x8 digits.

MNIST-1D (Greydanus, 2020) is built locally by the ``mnist1d`` package from its ten 1-D
templates with the package's default generator arguments (4000 training and 1000 test signals
of length 40) -- never through the package's download path -- and cached under the data
folder in a file named by a hash of those arguments. Its checksum (:data:`MNIST1D_SHA256`,
SHA-256 of the generated arrays) is recorded with the run, so a run says exactly which data it
saw. The generator seeds NumPy's and Python's global random states; they are restored after.

The digits (1797 images, shipped with scikit-learn) get a fixed stratified split:
:data:`DIGITS_TEST_FRACTION` of each class is held out for testing (719 images: one digit is
0.14 points), chosen by a fixed seed, the same on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdesam.experiment.records import atomic_write
from sdesam.train.datasets import ImageDataset, channel_statistics
from sdesam.train.splits import stratified_split
from sdesam.validation import InputError

DEFAULT_DATA_DIR = Path(os.environ.get("SDESAM_DATA", Path.home() / ".cache" / "sdesam"))
"""Where generated data sets are cached when no ``data_dir`` is given ($SDESAM_DATA overrides)."""

MNIST1D_SHA256 = "70116abcfe53bc995603be224e1dbcfd8556e3820ff4062199fea14c457c755e"
"""SHA-256 of the canonical MNIST-1D arrays as trained on: x and x_test as float32, y and
y_test as int64 (:func:`mnist1d_trained_checksum`), made with the package's defaults."""

DIGITS_TEST_FRACTION = 0.4
DIGITS_SPLIT_SEED = 0


def mnist1d_arguments() -> dict[str, Any]:
    """The package's default generator arguments, without its download address."""
    from mnist1d.data import get_dataset_args

    return {key: value for key, value in get_dataset_args(as_dict=True).items() if key != "url"}


def arrays_checksum(arrays: list[np.ndarray]) -> str:
    """SHA-256 over the dtype, shape and bytes of each array in turn."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def mnist1d_trained_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the MNIST-1D arrays as the trainer sees them (float32 signals, int64 labels):
    the same on every processor, unlike the raw float64 arrays (see the module docstring)."""
    return arrays_checksum([arrays["x"].astype(np.float32), arrays["y"].astype(np.int64),
                            arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64)])


def generator_versions() -> dict[str, str]:
    """Versions of the packages whose numerics make the MNIST-1D arrays."""
    from importlib.metadata import version

    return {name: version(name) for name in ("numpy", "scipy", "mnist1d")}


def generate_mnist1d() -> dict[str, np.ndarray]:
    """The canonical MNIST-1D arrays ``x, y, x_test, y_test``, made by ``mnist1d`` from its
    templates (about 5 s), leaving the global random states as they were."""
    from mnist1d.data import get_dataset_args, make_dataset

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        made = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {key: np.asarray(made[key]) for key in ("x", "y", "x_test", "y_test")}


def mnist1d_arrays(data_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], Path]:
    """The MNIST-1D arrays from the cache under ``data_dir`` (generated and cached on first use)
    and the cache file. A damaged cache file is named in an InputError."""
    arguments = mnist1d_arguments()
    key = hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / "mnist1d" / f"mnist1d-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                return {name: stored[name] for name in ("x", "y", "x_test", "y_test")}, path
        except Exception as error:  # a truncated or foreign file
            raise InputError(f"MNIST-1D cache file {str(path)!r} is corrupt ({type(error).__name__}:"
                             f" {error}); delete it and it will be generated again") from None
    arrays = generate_mnist1d()
    try:
        atomic_write(path, lambda handle: np.savez(handle, **arrays), mode="wb")
    except OSError as error:
        raise InputError(f"data_dir {str(path.parent)!r}: cannot cache MNIST-1D there "
                         f"({error.strerror}); pass --data-dir with a writable folder") from None
    return arrays, path


def load_mnist1d(data_dir: str | Path | None = None) -> ImageDataset:
    """MNIST-1D as signals [N, 1, 40] (float32) with its generator arguments and checksum."""
    arrays, path = mnist1d_arrays(data_dir)
    checksum = mnist1d_trained_checksum(arrays)
    train_x = torch.tensor(arrays["x"], dtype=torch.float32).unsqueeze(1)
    test_x = torch.tensor(arrays["x_test"], dtype=torch.float32).unsqueeze(1)
    train_y = torch.tensor(arrays["y"], dtype=torch.int64)
    test_y = torch.tensor(arrays["y_test"], dtype=torch.int64)
    mean, std = channel_statistics(train_x)
    info = {"source": "mnist1d.data.make_dataset(get_dataset_args()) (generated locally)",
            "generator_arguments": mnist1d_arguments(), "sha256": checksum,
            "canonical": checksum == MNIST1D_SHA256,
            "raw_sha256": arrays_checksum([arrays[k] for k in ("x", "y", "x_test", "y_test")]),
            "generator_versions": generator_versions(), "cache_file": str(path)}
    return ImageDataset("mnist1d", train_x, train_y, test_x, test_y, 10,
                        [str(k) for k in range(10)], mean, std, info=info)


def load_digits() -> ImageDataset:
    """scikit-learn's 8x8 digits as [N, 1, 8, 8] float32 in [0, 1], with the fixed stratified
    test split (see the module docstring)."""
    from sklearn.datasets import load_digits as sklearn_digits

    images, labels = sklearn_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(labels, dtype=torch.int64)
    train, test = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    mean, std = channel_statistics(x[train])
    info = {"source": "sklearn.datasets.load_digits (bundled)",
            "test_fraction": DIGITS_TEST_FRACTION, "split_seed": DIGITS_SPLIT_SEED,
            "sha256": arrays_checksum([images, labels])}
    return ImageDataset("digits", x[train], y[train], x[test], y[test], 10,
                        [str(k) for k in range(10)], mean, std, info=info)
