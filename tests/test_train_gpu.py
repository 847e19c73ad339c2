"""The same pipeline on CUDA (skipped without a GPU): augmentation and a short bf16 run."""

from __future__ import annotations

import json

import pytest
import torch

from sdesam.train import TrainConfig, train
from sdesam.train.augment import crop_flip, draw_crop_flip

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_augmentation_on_cuda_equals_cpu():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=generator)
    params = draw_crop_flip(64, 4, generator)
    assert torch.equal(crop_flip(images.cuda(), *params, padding=4).cpu(),
                       crop_flip(images, *params, padding=4))


@pytest.mark.parametrize("optimizer, extra", [("sam", {}), ("m-sam", {"micro": 16}),
                                              ("rw-sam", {})])
def test_resnet18_trains_on_cuda_in_bf16(tmp_path, optimizer, extra):
    result = train(TrainConfig(out=str(tmp_path), dataset="synthetic", synthetic_train=512,
                               synthetic_test=256, model="resnet18", optimizer=optimizer,
                               batch_size=64, epochs=1, device="cuda", progress=False, **extra))
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["epoch"] == 1 and record["images_per_s"] > 0
    assert next(result.model.parameters()).is_cuda
