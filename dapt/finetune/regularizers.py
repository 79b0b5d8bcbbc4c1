"""Training-time robustness: label smoothing, R-Drop and adversarial training on the word embeddings
(FGM, PGD), as the loss of one fine-tuning micro-batch.

Adversarial perturbations are added to the *output* of the model's input-embedding layer
(`get_input_embeddings()`), not to its weights, so they work for every method: PEFT methods freeze
that layer, and only its output has a gradient (prompt methods' virtual tokens are not perturbed).
FGM (Miyato et al., 2017) takes one step of length `adv_epsilon` along the loss gradient,
normalised per example; PGD (Madry et al., 2018) takes `adv_steps` steps of length `adv_alpha`,
each projected back onto the `adv_epsilon` ball. The objective is the clean loss plus the loss at
the perturbed embeddings, as in both papers' text recipes. R-Drop (Liang et al., 2021) runs the
batch twice in one forward (two dropout masks) and adds `rdrop` x the symmetric KL divergence of
the two predictions. Every option is off by default (`dapt.study.defaults.ROBUST_DEFAULTS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from dapt.study.defaults import ROBUST_DEFAULTS

#: The gradient towards the perturbation is taken of the loss times this (its direction is what counts):
#: fp16 activations would otherwise round small gradients to zero.
_GRAD_SCALE = 128.0


def robust_settings(params: dict) -> dict:
    """A run's robustness options, defaults filled in (only options a config sets are in its params,
    so runs without them keep the hyperparameters, and the files, they had before these existed)."""
    return {key: params.get(key, default) for key, default in ROBUST_DEFAULTS.items()}


def changes_encoder_input(params: dict) -> bool:
    """Whether training runs the encoder on inputs other than the stored texts (the `head` method's
    store of encoder outputs must then stay off)."""
    s = robust_settings(params)
    return s["adversarial"] != "none" or s["rdrop"] > 0


class EmbeddingNoise:
    """A forward hook on the input embeddings: adds `delta` to their output, or, while `recording`,
    a zero tensor whose gradient is the gradient of the loss with respect to the embeddings."""

    def __init__(self, model: torch.nn.Module):
        self.layer = model.get_input_embeddings()
        self.delta: torch.Tensor | None = None
        self.recorded: torch.Tensor | None = None
        self._record = False

    def _hook(self, module, args, output: torch.Tensor) -> torch.Tensor:
        if self._record:
            self.recorded = torch.zeros_like(output, requires_grad=True)
            return output + self.recorded
        return output if self.delta is None else output + self.delta.to(output.dtype)

    @contextlib.contextmanager
    def active(self, delta: torch.Tensor | None = None, record: bool = False) -> Iterator[None]:
        self.delta, self._record, self.recorded = delta, record, None
        handle = self.layer.register_forward_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()
            self.delta, self._record = None, False


def _unit(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The gradient normalised to length 1 per example (padding positions get none)."""
    grad = grad.float() * mask[..., None].to(torch.float32)
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / norm[:, None, None]


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Back onto the epsilon ball, per example."""
    norm = delta.flatten(1).norm(dim=1)
    return delta * (epsilon / norm.clamp_min(epsilon))[:, None, None]


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R-Drop's regulariser: (KL(p_a || p_b) + KL(p_b || p_a)) / 2, averaged over the batch."""
    la, lb = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
    return 0.5 * (
        F.kl_div(lb, la, log_target=True, reduction="batchmean")
        + F.kl_div(la, lb, log_target=True, reduction="batchmean")
    )


Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def robust_loss(
    forward: Forward,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    params: dict,
    noise: EmbeddingNoise | None = None,
    perturbed_forward: Forward | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training objective, clean classification loss) of one micro-batch.

    `forward(ids, mask)` returns logits (under autocast); `noise` hooks the model it runs (needed
    when an adversarial option is set). `perturbed_forward` runs the perturbed passes (default:
    `forward`): data-parallel training gives the unwrapped model, so that the one backward of the
    step, through both passes, synchronises each gradient once."""
    s = robust_settings(params)
    perturbed_forward = perturbed_forward or forward

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=s["label_smoothing"])

    adversarial = s["adversarial"] != "none"
    with noise.active(record=True) if adversarial else contextlib.nullcontext():
        if s["rdrop"] > 0:  # one forward of the doubled batch: two dropout masks, one pass
            first, second = forward(torch.cat([ids, ids]), torch.cat([mask, mask])).float().chunk(2)
            clean = 0.5 * (loss_of(first) + loss_of(second))
            objective = clean + s["rdrop"] * symmetric_kl(first, second)
        else:
            clean = objective = loss_of(forward(ids, mask))
    if not adversarial:
        return objective, clean
    grad = torch.autograd.grad(objective * _GRAD_SCALE, noise.recorded, retain_graph=True)[0]
    if s["rdrop"] > 0:
        grad = grad.view(2, *ids.shape, -1).sum(0)  # both passes saw the same embeddings
    epsilon = s["adv_epsilon"]
    if s["adversarial"] == "fgm":
        delta = epsilon * _unit(grad, mask)
    else:
        delta = _project(s["adv_alpha"] * _unit(grad, mask), epsilon)
        for _ in range(s["adv_steps"] - 1):
            delta = delta.detach().requires_grad_(True)
            with noise.active(delta):
                step_loss = loss_of(perturbed_forward(ids, mask))
            grad = torch.autograd.grad(step_loss * _GRAD_SCALE, delta)[0]
            delta = _project(delta.detach() + s["adv_alpha"] * _unit(grad, mask), epsilon)
    with noise.active(delta.detach()):
        adversarial_loss = loss_of(perturbed_forward(ids, mask))
    return objective + adversarial_loss, clean
