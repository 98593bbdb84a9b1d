"""Wen et al. (ICLR 2024): memorization shows as a large text-conditional noise prediction.

The detection score of one sampling step is the L2 norm, over the whole latent, of ``ε(x_t, c) − ε(x_t, ∅)``, the
text-conditional part of the noise prediction *before* it is multiplied by the guidance scale. Under
classifier-free guidance the sampler computes both predictions anyway, so the score costs nothing extra. A
generation carries two scores: at the first step (``detect_first``) and averaged over all steps (``detect_mean``).

A model that predicts ``v`` (SD 2.x, the embedded tiny model) or ``x_0`` is scored on the same ε scale: with
``x_t = √ᾱ x_0 + √(1−ᾱ) ε``, ``ε = √ᾱ v + √(1−ᾱ) x_t`` (so the difference is ``√ᾱ Δv``) and
``ε = (x_t − √ᾱ x_0) / √(1−ᾱ)`` (``−√ᾱ/√(1−ᾱ) Δx_0``); ``x_t`` is the same in both predictions and cancels.

The same quantity drives Wen's two mitigations: at inference, the prompt embedding is optimised to lower the
first-step score before sampling (:func:`optimise_embeddings`); in training, samples whose score exceeds a threshold
are left out of the loss (:func:`loss_mask`, used by ``copying_study.diffusion.train``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def epsilon_factor(prediction_type: str, alpha_bar: float | torch.Tensor) -> torch.Tensor:
    """The factor that turns a difference of two model outputs at the same ``x_t`` into the difference of the
    noise predictions ``ε``: 1 (epsilon), ``√ᾱ`` (v), ``−√ᾱ/√(1−ᾱ)`` (sample); ``alpha_bar`` may be per row."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float32)
    if prediction_type == "epsilon":
        return torch.ones_like(a)
    if prediction_type == "v_prediction":
        return a.sqrt()
    if prediction_type == "sample":
        return -(a / (1 - a)).sqrt()
    raise ValueError(f"detection score: unknown prediction_type '{prediction_type}' (expected one of "
                     f"{', '.join(PREDICTION_TYPES)})")


def text_conditional_norm(uncond: torch.Tensor, cond: torch.Tensor, factor: float | torch.Tensor = 1.0
                          ) -> torch.Tensor:
    """Per-row L2 norm over the whole latent of ``factor · (cond − uncond)`` in float32: Wen's score of one step
    (``factor`` from :func:`epsilon_factor`; a scalar, or one value per row)."""
    if uncond.shape != cond.shape:
        raise ValueError(f"detection score: unconditional {tuple(uncond.shape)} and conditional "
                         f"{tuple(cond.shape)} predictions differ in shape")
    diff = (cond.float() - uncond.float()).flatten(1)
    f = torch.as_tensor(factor, dtype=torch.float32, device=diff.device)
    return (diff * f.reshape(-1, 1) if f.ndim else diff * f).norm(dim=1)


def alpha_bar_at(scheduler, t: torch.Tensor | int) -> float:
    """``ᾱ_t`` of a diffusers scheduler at training timestep ``t`` (every scheduler the sampler offers has
    ``alphas_cumprod``)."""
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ValueError(f"detection score: scheduler {type(scheduler).__name__} has no alphas_cumprod")
    return float(table[int(t)])


@dataclass(frozen=True)
class WenSettings:
    """Wen et al.'s inference-time mitigation: AdamW on the conditional prompt embedding (``lr``), at most
    ``max_iters`` steps, a row stops once its first-step score is at or below ``target_loss``."""

    lr: float = 0.05
    max_iters: int = 10
    target_loss: float = 3.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.max_iters < 0 or self.target_loss < 0:
            raise ValueError(f"wen mitigation: lr must be > 0, max_iters and target_loss >= 0 (got lr={self.lr}, "
                             f"max_iters={self.max_iters}, target_loss={self.target_loss})")


@dataclass
class OptimisedEmbeddings:
    """The optimised conditional embeddings, each row's iterations and its score before and after."""

    cond: torch.Tensor
    iterations: list[int]
    score_before: list[float]
    score_after: list[float]


def optimise_embeddings(
    first_step_scores: Callable[[torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    rows: list[bool],
    settings: WenSettings,
) -> OptimisedEmbeddings:
    """Minimise each selected row's first-step score over its conditional embedding ``cond[i]`` ([L, D]).

    ``first_step_scores(cond)`` returns the per-row first-step score (differentiable in ``cond``) at the fixed
    ``x_T`` of each row. Each row is its own parameter, so rows stop independently (a stopped row gets no gradient,
    hence no AdamW update or weight decay). The start-of-text token's embedding (position 0) is never changed, as in
    Wen et al.'s code. Rows not selected are returned unchanged. Deterministic for given inputs.
    """
    params = [row.detach().clone().float().requires_grad_(sel) for row, sel in zip(cond, rows, strict=True)]
    chosen = [p for p, sel in zip(params, rows, strict=True) if sel]
    optimiser = torch.optim.AdamW(chosen, lr=settings.lr) if chosen else None
    active = list(rows)
    iterations = [0] * len(rows)
    before: list[float] = []
    after: list[float] = []
    for it in range(settings.max_iters + 1):
        with torch.enable_grad():
            scores = first_step_scores(torch.stack(params).to(cond.dtype))
        values = [float(s) for s in scores.detach()]
        if it == 0:
            before = values
        after = values
        active = [a and v > settings.target_loss for a, v in zip(active, values, strict=True)]
        if it == settings.max_iters or not any(active):
            break
        targets = [p for p, a in zip(params, active, strict=True) if a]
        loss = sum(s for s, a in zip(scores, active, strict=True) if a)
        grads = torch.autograd.grad(loss, targets)
        for p in params:
            p.grad = None
        for p, g in zip(targets, grads, strict=True):
            g = g.clone()
            g[0] = 0  # the start-of-text token's embedding stays as it is
            p.grad = g
        optimiser.step()
        for i, a in enumerate(active):
            iterations[i] += int(a)
    out = torch.stack([p.detach() for p in params]).to(cond.dtype)
    out[:, 0] = cond[:, 0]
    return OptimisedEmbeddings(out, iterations, before, after)


def loss_mask(scores: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Wen et al.'s training-time mitigation: 1 for samples kept in the loss, 0 for those whose detection score is
    above ``threshold`` (``None``: every sample is kept)."""
    if threshold is None:
        return torch.ones_like(scores, dtype=torch.float32)
    return (scores <= float(threshold)).float()
