"""Training real networks with any rule of the registry that has an optimizer.

:mod:`.data` (CIFAR from local python-batch files, a synthetic set; data kept on the device),
:mod:`.cpu_data` (MNIST-1D, digits), :mod:`.datasets` (the container both load into),
:mod:`.augment` (batched crop + flip), :mod:`.models`, :mod:`.schedule`, :mod:`.config`
(:class:`TrainConfig`), :mod:`.setup` (data, model, optimizer, out folder), :mod:`.epochs`
(restore, epoch, record), :mod:`.loop` (:func:`train`), :mod:`.checkpoint` (atomic, exactly
resumable), :mod:`.distributed` (DDP under torchrun) and :mod:`.cli` (``sdesam train``).
"""

from sdesam.train.loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
