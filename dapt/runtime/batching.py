"""How examples become batches, for training, validation, evaluation and the head's feature store.

Training batches are length-bucketed (shuffled chunks sorted by length, then the batches shuffled)
and padded per batch, so short texts cost short sequences; inference batches are sorted by length,
which changes no prediction and removes almost all padding.
"""

from __future__ import annotations

import numpy as np
import torch


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, generator: torch.Generator, chunk: int = 50
) -> list[np.ndarray]:
    """Shuffle, sort within chunks of `chunk` batches by length, then shuffle the batches."""
    order = torch.randperm(len(lengths), generator=generator).numpy()
    batches = []
    for start in range(0, len(order), batch_size * chunk):
        part = order[start : start + batch_size * chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    perm = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in perm]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Inference batches of similar length: almost no padding, same predictions as any order."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(input_ids: list[np.ndarray], idx: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of the examples `idx`, right-padded to the longest of them."""
    width = max(len(input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = torch.from_numpy(input_ids[i])
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def rank_share(idx: np.ndarray, rank: int, world_size: int) -> tuple[np.ndarray, float]:
    """This rank's rows of a global batch and the weight of each of its examples.

    DDP averages gradients over the ranks, so each example weighs world_size / len(idx): the update
    is the mean over the global batch. A rank left without rows (fewer examples than ranks) still
    joins the gradient all-reduce with one row weighted 0."""
    shard = idx[rank::world_size]
    if len(shard) == 0:
        return idx[:1], 0.0
    return shard, world_size / len(idx)
