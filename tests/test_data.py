"""Data sets: the CIFAR python-batch loader, the synthetic set, shuffling and sharding."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sdesam.validation import InputError
from sdesam.train.data import (batch_indices, channel_statistics, epoch_generator, eval_batches,
                               find_cifar_folder, load_cifar, load_dataset, shard,
                               synthetic_dataset, write_cifar)


def _official_cifar10(folder, per_batch=4, seed=0):
    """Hand-made CIFAR-10 python batches (rows of 3072 bytes: 1024 red, 1024 green, 1024 blue)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        label = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": name.encode(), b"labels": label, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, handle)
        rows.append(data)
        labels.append(label)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)],
                     b"num_cases_per_batch": per_batch}, handle)
    return rows, labels


def test_cifar10_pixels_and_labels_follow_the_official_layout(tmp_path):
    rows, labels = _official_cifar10(tmp_path / "cifar-10-batches-py")
    data = load_cifar("cifar10", tmp_path)  # the parent folder is accepted too
    assert data.train_images.shape == (20, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (4, 3, 32, 32)
    # image 5 = second image of data_batch_2; pixel (c, h, w) is byte c*1024 + h*32 + w
    row = rows[1][1]
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 31), (0, 31, 0)]:
        assert data.train_images[5, c, h, w].item() == row[c * 1024 + h * 32 + w]
    assert data.train_labels.tolist() == sum(labels[:5], [])
    assert data.test_labels.tolist() == labels[5]
    assert data.num_classes == 10 and data.class_names[3] == "c3"


def test_cifar100_uses_fine_labels(tmp_path):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    fine = torch.tensor([0, 99, 5, 42, 7, 1])
    write_cifar(tmp_path, "cifar100", (images, fine), (images[:2], fine[:2]),
                [f"n{k}" for k in range(100)])
    with open(tmp_path / "train", "rb") as handle:  # add coarse labels as the real files have
        batch = pickle.load(handle)
    batch[b"coarse_labels"] = [0] * 6
    with open(tmp_path / "train", "wb") as handle:
        pickle.dump(batch, handle)
    data = load_cifar("cifar100", tmp_path)
    assert data.num_classes == 100
    assert torch.equal(data.train_labels, fine) and torch.equal(data.train_images, images)


def test_missing_files_are_named(tmp_path):
    write_cifar(tmp_path, "cifar10", (torch.zeros(5, 3, 32, 32, dtype=torch.uint8),
                                      torch.zeros(5, dtype=torch.long)),
                (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, dtype=torch.long)),
                [str(k) for k in range(10)])
    (tmp_path / "data_batch_3").unlink()
    (tmp_path / "test_batch").unlink()
    with pytest.raises(ValueError, match="data_batch_3.*test_batch"):
        find_cifar_folder("cifar10", tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="data_dir is required"):
        load_dataset("cifar100", None)
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("mnist")


def test_channel_statistics_match_numpy():
    images = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_statistics(images)
    values = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean.numpy(), values.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), values.std(axis=(0, 2, 3), ddof=1), rtol=1e-6)


def test_synthetic_is_seeded_and_has_class_structure():
    a, b, c = synthetic_dataset(300, 100, seed=1), synthetic_dataset(300, 100, seed=1), \
        synthetic_dataset(300, 100, seed=2)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, c.train_images)
    assert a.train_images.shape == (300, 3, 32, 32) and a.train_images.dtype == torch.uint8
    # learnable: a nearest-class-mean classifier on blurred images beats chance (10%) clearly
    def features(x):
        return torch.nn.functional.avg_pool2d(x.float(), 8).flatten(1)
    centres = torch.stack([features(a.train_images[a.train_labels == k]).mean(0) for k in range(10)])
    predicted = torch.cdist(features(a.test_images), centres).argmin(1)
    assert (predicted == a.test_labels).float().mean() > 0.3


def test_batches_form_a_seeded_permutation():
    batches = batch_indices(103, 10, epoch_generator(seed=3, epoch=2))
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)  # last 3 dropped
    seen = torch.cat(batches)
    assert len(set(seen.tolist())) == 100 and seen.max() < 103
    again = batch_indices(103, 10, epoch_generator(seed=3, epoch=2))
    assert all(torch.equal(x, y) for x, y in zip(batches, again))
    other = batch_indices(103, 10, epoch_generator(seed=3, epoch=3))
    assert not torch.equal(torch.cat(other), seen)
    assert len(batch_indices(103, 10, epoch_generator(0, 0), drop_last=False)) == 11
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(5, 8, epoch_generator(0, 0))


def test_shards_partition_the_batch_and_eval_covers_every_sample_once():
    batch = torch.arange(12) * 7
    parts = [shard(batch, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    with pytest.raises(ValueError, match="divisible"):
        shard(batch, 0, 5)
    covered = torch.cat([i for r in range(3) for i in eval_batches(10, 2, r, 3)])
    assert sorted(covered.tolist()) == list(range(10))


def test_mnist1d_is_generated_locally_with_the_canonical_shape_balance_and_checksum(tmp_path):
    from sdesam.train import cpu_data

    numpy_state = np.random.get_state()[1].copy()
    data = load_dataset("mnist1d", tmp_path)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # global RNG left alone
    assert data.train_images.shape == (4000, 1, 40) and data.test_images.shape == (1000, 1, 40)
    assert data.train_images.dtype == torch.float32 and data.num_classes == 10
    counts = torch.bincount(torch.cat([data.train_labels, data.test_labels]), minlength=10)
    assert counts.tolist() == [500] * 10  # 5000 signals, 500 per digit
    assert data.info["sha256"] == cpu_data.MNIST1D_SHA256 and data.info["canonical"]
    assert set(data.info["generator_versions"]) == {"numpy", "scipy", "mnist1d"}
    assert len(data.info["raw_sha256"]) == 64  # the float64 arrays: a fact about this machine
    assert data.info["generator_arguments"]["seed"] == 42 and "url" not in data.info["generator_arguments"]
    cached = list((tmp_path / "mnist1d").glob("mnist1d-*.npz"))
    assert len(cached) == 1
    again = load_dataset("mnist1d", tmp_path)  # read back from the cache
    assert torch.equal(again.train_images, data.train_images)
    cached[0].write_bytes(cached[0].read_bytes()[:100])
    with pytest.raises(ValueError, match=r"MNIST-1D cache file .*mnist1d-.*\.npz' is corrupt"):
        load_dataset("mnist1d", tmp_path)


def test_digits_have_a_fixed_stratified_test_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_labels, b.train_labels)
    assert len(a.train_labels) + len(a.test_labels) == 1797 and len(a.test_labels) == 719
    share = torch.bincount(a.test_labels, minlength=10) / (
        torch.bincount(a.test_labels, minlength=10) + torch.bincount(a.train_labels, minlength=10))
    assert torch.all((share - 0.4).abs() < 0.01)
    assert a.train_images.shape[1:] == (1, 8, 8) and float(a.train_images.max()) == 1.0


def test_validation_split_and_label_noise_touch_only_the_training_split():
    from sdesam.train.splits import with_label_noise, with_validation

    base = load_dataset("digits")
    split = with_validation(base, 0.25, seed=3)
    assert len(split.train_labels) + len(split.val_labels) == len(base.train_labels)
    val_share = torch.bincount(split.val_labels, minlength=10) / torch.bincount(base.train_labels, minlength=10)
    assert torch.all((val_share - 0.25).abs() < 0.02)  # stratified
    noisy = with_label_noise(split, 0.4, seed=5)
    wrong = noisy.train_labels != split.train_labels
    assert int(wrong.sum()) == round(0.4 * len(split.train_labels))  # exactly p of them wrong
    assert torch.equal(torch.nonzero(wrong).flatten(), noisy.flipped)
    assert torch.equal(noisy.val_labels, split.val_labels) and torch.equal(noisy.test_labels, base.test_labels)
    assert torch.equal(with_label_noise(split, 0.4, seed=5).train_labels, noisy.train_labels)
    assert not torch.equal(with_label_noise(split, 0.4, seed=6).train_labels, noisy.train_labels)
    # the wrong labels are spread over the other classes (symmetric noise)
    assert len(torch.unique(noisy.train_labels[wrong])) == 10


def test_noisy_validation_flips_the_same_share_of_validation_labels_and_keeps_the_true_ones():
    from sdesam.train.splits import with_label_noise, with_validation

    split = with_validation(load_dataset("digits"), 0.25, seed=3)
    noisy = with_label_noise(split, 0.2, seed=5, validation=True)
    assert torch.equal(noisy.train_labels, with_label_noise(split, 0.2, seed=5).train_labels)
    assert torch.equal(noisy.val_clean_labels, split.val_labels)
    wrong = noisy.val_labels != split.val_labels
    assert int(wrong.sum()) == round(0.2 * len(split.val_labels))
    # its own draw, not the training draw's first indices
    assert not torch.equal(torch.nonzero(wrong).flatten(), noisy.flipped[:int(wrong.sum())])
    with pytest.raises(InputError, match="noisy_validation needs a validation split"):
        with_label_noise(load_dataset("digits"), 0.2, seed=5, validation=True)


def test_the_trainer_reports_noisy_and_clean_validation_accuracy(tmp_path):
    from sdesam.train.loop import TrainConfig, train

    config = TrainConfig(out=str(tmp_path / "run"), dataset="digits", epochs=1, batch_size=64,
                         val_fraction=0.2, label_noise=0.3, noisy_validation=True, progress=False)
    record = train(config).metrics[-1]
    assert record["val_clean_acc"] != record["val_acc"]
    with pytest.raises(InputError, match="noisy_validation .* needs val_fraction > 0 and label_noise > 0"):
        TrainConfig(out=str(tmp_path / "other"), dataset="digits", noisy_validation=True,
                    val_fraction=0.2).validate()


def test_a_corrupt_or_truncated_cifar_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _official_cifar10(folder)
    good = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"CIFAR file .*data_batch_2' is truncated or corrupt"):
        load_cifar("cifar10", tmp_path)
    with open(folder / "data_batch_2", "wb") as handle:  # rows and labels disagree
        pickle.dump({b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [1, 2]}, handle)
    with pytest.raises(ValueError, match=r"data_batch_2' holds 4 images but 2 labels"):
        load_cifar("cifar10", tmp_path)


AVX512 = ("AVX512F AVX512CD AVX512VL AVX512BW AVX512DQ AVX512_SKX AVX512_CLX AVX512_CNL "
          "AVX512_ICL AVX512_SPR X86_V4 AVX512VPOPCNTDQ AVX512VNNI AVX512IFMA AVX512VBMI "
          "AVX512VBMI2 AVX512BITALG AVX512_FP16")


def test_mnist1d_checksum_is_the_same_with_numpys_other_simd_kernels(tmp_path):
    """The raw float64 arrays depend on which SIMD kernels NumPy picks (AVX-512 or not); the
    arrays as trained on (float32) must not, or 'canonical' would depend on the processor."""
    import os
    import subprocess
    import sys

    from sdesam.train import cpu_data

    script = ("from sdesam.train import cpu_data as c; "
              "print(c.mnist1d_trained_checksum(c.generate_mnist1d()))")
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": AVX512}
    made = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert made.stdout.split()[-1] == cpu_data.MNIST1D_SHA256


def test_a_non_canonical_data_set_is_named_with_the_versions_that_made_it():
    from sdesam.train.loop import data_line

    info = {"sha256": "ab" * 32, "canonical": False,
            "generator_versions": {"numpy": "9.0", "scipy": "2.0", "mnist1d": "0.1"}}
    line = data_line("mnist1d", info)
    assert "NOT the canonical mnist1d" in line and "numpy 9.0, scipy 2.0, mnist1d 0.1" in line
    assert data_line("mnist1d", {**info, "canonical": True}).endswith("(canonical)")
