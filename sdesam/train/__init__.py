"""Training real networks with any rule of the registry that has an optimizer.

:mod:`.data` (CIFAR from local python-batch files, MNIST-1D, digits, a synthetic set; data kept on the device),
:mod:`.augment` (batched crop + flip), :mod:`.models`, :mod:`.schedule`, :mod:`.loop`
(:class:`TrainConfig`, :func:`train`), :mod:`.checkpoint` (atomic, exactly resumable),
:mod:`.distributed` (DDP under torchrun) and :mod:`.cli` (``sdesam train``).
"""

from sdesam.train.loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
