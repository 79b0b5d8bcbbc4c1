"""The MLM objective: BERT's dynamic masking, and a loss computed at the masked positions only.

The vocabulary projection is about half the FLOPs of a small encoder; the models' standard MLM
forward runs it at every position, this one only where a token was masked (~15 %). Masking draws
its random numbers for a whole global batch from one stream, so any number of processes masks
exactly what one process would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    probability: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's dynamic masking: pick `probability` of the non-special tokens; 80% [MASK], 10% random, 10% kept."""
    return apply_masking(
        input_ids, special, masking_draws(input_ids.shape, vocab_size, generator), probability, mask_id
    )


def masking_draws(
    shape: tuple[int, ...] | torch.Size, vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random numbers masking a global batch takes, in the stream's order: which positions,
    what becomes of them, the random replacement ids. Every rank draws the whole batch's (one
    stream for any number of processes) and applies its own rows of them."""
    chosen = torch.rand(shape, generator=generator)
    action = torch.rand(shape, generator=generator)
    return chosen, action, torch.randint(vocab_size, shape, generator=generator)


def apply_masking(
    input_ids: torch.Tensor, special: torch.Tensor, draws: tuple[torch.Tensor, ...], probability: float, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels (-100 where not masked) of some rows, from those rows' draws."""
    pick, action, random_ids = draws
    labels = input_ids.clone()
    chosen = (pick < probability) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    randomize = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomize] = random_ids[randomize]
    return inputs, labels


#: The modules, in order, that map a masked LM's hidden states to vocabulary logits, as its own forward
#: applies them: BERT & DeBERTa-v2 `cls`, RoBERTa, XLM-R & MPNet `lm_head`, ALBERT `predictions`, DistilBERT
#: its transform, activation, LayerNorm and projector, ELECTRA its generator head, ModernBERT `head` + `decoder`.
MLM_HEADS: tuple[tuple[str, ...], ...] = (
    ("cls",),
    ("lm_head",),
    ("predictions",),
    ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
    ("generator_predictions", "generator_lm_head"),
    ("head", "decoder"),
)


def mlm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module mapping hidden states to vocabulary logits (None: an architecture not listed in
    `MLM_HEADS`, trained by its own forward, logits at every position)."""
    for names in MLM_HEADS:
        parts = [getattr(model, name, None) for name in names]
        if all(isinstance(p, torch.nn.Module) for p in parts):
            return parts[0] if len(parts) == 1 else torch.nn.Sequential(*parts)
    return None


class MaskedOnlyMLM(torch.nn.Module):
    """Loss from logits at the masked positions only; a module so DDP can wrap it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.head = mlm_head(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy over the masked positions: their mean, or with reduction="sum" their sum."""
        if self.head is None:  # unknown architecture: the standard forward, logits everywhere
            loss = self.model(input_ids=input_ids, labels=labels).loss
            return loss * (labels != -100).sum() if reduction == "sum" else loss
        hidden = self.model.base_model(input_ids=input_ids).last_hidden_state
        selected = labels != -100
        logits = self.head(hidden[selected])
        return F.cross_entropy(logits.float(), labels[selected], reduction=reduction)
