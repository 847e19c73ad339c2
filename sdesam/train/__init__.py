"""Training real networks with SGD, SAM, USAM, m-SAM and RW-SAM.

:mod:`.data` (CIFAR from local python-batch files, a synthetic set; data kept on the device),
:mod:`.augment` (batched crop + flip), :mod:`.models`, :mod:`.schedule`, :mod:`.loop`
(:class:`TrainConfig`, :func:`train`), :mod:`.checkpoint` (atomic, exactly resumable),
:mod:`.distributed` (DDP under torchrun) and :mod:`.cli` (``sdesam train``).
"""

from sdesam.train.loop import OPTIMIZERS, TrainConfig, TrainResult, train

__all__ = ["OPTIMIZERS", "TrainConfig", "TrainResult", "train"]
