"""A validation split carved from the training data, and symmetric label noise on what is left.

Both are drawn from their own seed (the run's ``data_seed``), not the training seed: runs that
differ only in the training seed (init, batch order) see the same split and the same noisy
labels, so their accuracies can be compared pairwise.
"""

from __future__ import annotations

import dataclasses

import torch

from sdesam.validation import InputError


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held_out): ``round(fraction * count)`` of each class held out at random
    (from ``seed``); both sorted."""
    generator = torch.Generator().manual_seed(seed)
    held: list[torch.Tensor] = []
    for label in torch.unique(labels.cpu()):
        members = torch.nonzero(labels.cpu() == label).flatten()
        order = members[torch.randperm(len(members), generator=generator)]
        held.append(order[:round(fraction * len(members))])
    held_out = torch.sort(torch.cat(held)).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def with_validation(data, fraction: float, seed: int):
    """``data`` with a stratified ``fraction`` of its training split moved to a validation split."""
    if fraction == 0:
        return data
    kept, held = stratified_split(data.train_labels, fraction, seed)
    if len(held) == 0 or len(kept) == 0:
        raise InputError(f"val_fraction {fraction} leaves an empty training or validation split "
                         f"of the {len(data.train_labels)} training samples")
    kept, held = kept.to(data.train_labels.device), held.to(data.train_labels.device)
    info = {**data.info, "val_fraction": fraction, "val_size": len(held), "train_size": len(kept)}
    return dataclasses.replace(data, train_images=data.train_images[kept],
                               train_labels=data.train_labels[kept],
                               val_images=data.train_images[held], val_labels=data.train_labels[held],
                               info=info)


def symmetric_noise(labels: torch.Tensor, rate: float, num_classes: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, flipped indices): exactly ``round(rate * n)`` samples chosen at random
    (from ``seed``) get a label drawn uniformly from the *other* classes, so ``rate`` is the
    fraction of wrong labels."""
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    flipped = torch.sort(torch.randperm(n, generator=generator)[:round(rate * n)]).values
    shift = torch.randint(1, num_classes, (len(flipped),), generator=generator)
    noisy = labels.cpu().clone()
    noisy[flipped] = (noisy[flipped] + shift) % num_classes
    return noisy.to(labels.device), flipped


def with_label_noise(data, rate: float, seed: int, *, validation: bool = False):
    """``data`` with symmetric noise of ``rate`` on its training labels (the flipped indices
    kept in ``data.flipped``) and, with ``validation``, on its validation labels too, drawn
    from ``seed + 1`` (the true ones kept in ``data.val_clean_labels``): a practitioner's
    validation split is as noisy as the training data. Test labels stay clean."""
    if rate == 0:
        return data
    noisy, flipped = symmetric_noise(data.train_labels, rate, data.num_classes, seed)
    info = {**data.info, "label_noise": rate, "flipped_count": len(flipped)}
    changes = {}
    if validation:
        if data.val_labels is None:
            raise InputError("noisy_validation needs a validation split (val_fraction > 0)")
        val_noisy, val_flipped = symmetric_noise(data.val_labels, rate, data.num_classes, seed + 1)
        changes = {"val_labels": val_noisy, "val_clean_labels": data.val_labels}
        info["val_flipped_count"] = len(val_flipped)
    return dataclasses.replace(data, train_labels=noisy, flipped=flipped.to(noisy.device),
                               info=info, **changes)
