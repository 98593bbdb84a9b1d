"""Wen et al.'s detection score and the mitigations built on the sampler (Wen's embedding optimisation, Jain et al.'s
delayed and opposite guidance): each is checked against a hand computation, and shown to change what it should and
nothing else, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copying_study.diffusion.detection import (
    WenSettings,
    epsilon_factor,
    loss_mask,
    optimise_embeddings,
    text_conditional_norm,
)
from copying_study.diffusion.models import encode_prompts
from copying_study.diffusion.sample import ImageRequest, MitigationSettings, Sampler, mitigate

from .conftest import CAPTIONS, UNetRecorder, small_pipeline

CPU = torch.device("cpu")


class OutputRecorder:
    """Records every UNet call's timestep, input and output (a forward hook)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[tuple[float, torch.Tensor, torch.Tensor]] = []
        self._handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.calls.append((float(args[1]), kwargs["encoder_hidden_states"].detach().clone(),
                           output[0].detach().clone()))

    def close(self) -> None:
        self._handle.remove()


def pixels(samples) -> np.ndarray:
    return np.stack([np.asarray(s.image) for s in samples]).astype(np.int16)


@pytest.fixture(scope="module")
def eps_pipe():
    return small_pipeline(prediction_type="epsilon")


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon"])
def test_scores_match_a_hand_computation_on_the_unet_outputs(pipe, eps_pipe, kind):
    """first = ||f·(cond − uncond)|| of the first call, mean = the average over the calls; f = 1 (epsilon) or
    √ᾱ_t (v-prediction), computed here with numpy from the recorded raw UNet outputs."""
    model = eps_pipe if kind == "epsilon" else pipe
    s = Sampler(model, device=CPU, steps=3, guidance=5.0, batch_size=2)
    rec = OutputRecorder(model.unet)
    try:
        out = s.sample_batch([ImageRequest(CAPTIONS[0], 11), ImageRequest(CAPTIONS[4], 12)])
    finally:
        rec.close()
    assert model.scheduler.config.prediction_type == kind and len(rec.calls) == 3
    alphas = model.scheduler.alphas_cumprod.double().numpy()
    per_step = []
    for t, _, o in rec.calls:
        uncond, cond = o.double().numpy()[:2], o.double().numpy()[2:]
        f = 1.0 if kind == "epsilon" else np.sqrt(alphas[int(t)])
        per_step.append(np.sqrt(((f * (cond - uncond)) ** 2).reshape(2, -1).sum(axis=1)))
    per_step = np.array(per_step)
    np.testing.assert_allclose([x.detect_first for x in out], per_step[0], rtol=1e-5)
    np.testing.assert_allclose([x.detect_mean for x in out], per_step.mean(axis=0), rtol=1e-5)
    assert (per_step > 0).all()
    # the prompt-level score before sampling is the same first step from the same x_T
    np.testing.assert_allclose(s.first_step_scores([ImageRequest(CAPTIONS[0], 11)]), per_step[0, :1], rtol=1e-5)


def test_scores_are_nan_without_guidance_and_factors_follow_the_parameterisation(pipe):
    out = Sampler(pipe, device=CPU, steps=2, guidance=1.0, batch_size=1).sample_batch([ImageRequest("a", 1)])
    assert np.isnan(out[0].detect_first) and np.isnan(out[0].detect_mean)
    assert float(epsilon_factor("sample", 0.75)) == pytest.approx(-np.sqrt(3.0))
    assert float(epsilon_factor("v_prediction", 0.25)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        epsilon_factor("flow", 0.5)
    u, c = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    torch.testing.assert_close(text_conditional_norm(u, c, torch.tensor([1.0, 3.0])), torch.tensor([2.0, 6.0]))
    with pytest.raises(ValueError, match="with guidance off|need classifier-free guidance"):
        Sampler(pipe, device=CPU, steps=2, guidance=1.0, batch_size=1).sample_batch(
            [mitigate("a", 1, MitigationSettings("delayed"))])


# -- Jain et al.: delayed and opposite guidance ------------------------------------------------------------------
def test_guidance_schedule_per_row_by_timestep(pipe):
    s = Sampler(pipe, device=CPU, steps=2, guidance=4.0, batch_size=3)
    u, c = torch.zeros(3, 1, 1, 1), torch.ones(3, 1, 1, 1)
    reqs = [ImageRequest("a", 1), ImageRequest("a", 1, early_guidance=0.0, transition_t=500),
            ImageRequest("a", 1, early_guidance=-2.0, transition_t=650)]
    assert s._guide(u, c, torch.tensor(700), reqs).flatten().tolist() == [4.0, 0.0, -2.0]
    assert s._guide(u, c, torch.tensor(600), reqs).flatten().tolist() == [4.0, 0.0, 4.0]
    assert s._guide(u, c, torch.tensor(500), reqs).flatten().tolist() == [4.0, 4.0, 4.0]


@pytest.mark.parametrize("name", ["delayed", "opposite"])
def test_delayed_and_opposite_change_only_the_early_guidance(pipe, name):
    """Same seed, same embeddings fed, same first-step prediction (so the same first-step score); the images differ
    because the early steps are guided differently. A transition above every timestep is exactly no mitigation."""
    s = Sampler(pipe, device=CPU, steps=4, guidance=5.0, batch_size=2)
    base = [ImageRequest(CAPTIONS[i], 50 + i) for i in range(2)]
    rec = UNetRecorder(pipe.unet)
    try:
        plain = s.sample_batch(base)
        mitigated_reqs = [mitigate(r.prompt, r.seed, MitigationSettings(name)) for r in base]
        mitigated = s.sample_batch(mitigated_reqs)
    finally:
        rec.close()
    for a, b in zip(rec.calls[:4], rec.calls[4:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [m.detect_first for m in mitigated] == [p.detect_first for p in plain]
    assert np.abs(pixels(mitigated) - pixels(plain)).max() > 2
    assert np.array_equal(pixels(s.sample_batch(mitigated_reqs)), pixels(mitigated))  # seeded
    never = MitigationSettings(name, delayed_transition=1000, opposite_transition=1000)
    untouched = s.sample_batch([mitigate(r.prompt, r.seed, never) for r in base])
    assert np.array_equal(pixels(untouched), pixels(plain))
    req = mitigated_reqs[0]
    assert (req.early_guidance, req.transition_t) == ((0.0, 500) if name == "delayed" else (-2.0, 650))


# -- Wen et al.: prompt-embedding optimisation -------------------------------------------------------------------
def test_optimiser_keeps_the_start_token_and_stops_rows_at_the_target():
    """A toy score ||c − goal|| per row: AdamW lowers it, position 0 never moves, an unselected row is untouched, a
    row already at or below the target takes no step; one step equals torch's AdamW on the same gradient."""
    goal = torch.zeros(3, 4, 2)
    cond = torch.ones(3, 4, 2)
    cond[2] = 0.01  # already below the target

    def scores(c):
        return (c - goal)[:, 1:].flatten(1).norm(dim=1) + 0 * c[:, 0].sum()

    res = optimise_embeddings(scores, cond, [True, False, True], WenSettings(lr=0.05, max_iters=10, target_loss=0.5))
    torch.testing.assert_close(res.cond[:, 0], cond[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(res.cond[1], cond[1], rtol=0, atol=0)
    torch.testing.assert_close(res.cond[2], cond[2], rtol=0, atol=0)
    assert res.iterations == [10, 0, 0]
    assert res.score_after[0] < res.score_before[0] and res.score_after[1] == res.score_before[1]
    one = optimise_embeddings(scores, cond, [True, False, False], WenSettings(lr=0.05, max_iters=1, target_loss=0))
    p = cond[0].clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=0.05)
    g = torch.autograd.grad(scores(p[None])[0], [p])[0]
    g[0] = 0
    p.grad = g
    opt.step()
    torch.testing.assert_close(one.cond[0, 1:], p.detach()[1:], rtol=0, atol=1e-7)  # (AdamW's weight decay
    assert one.iterations == [1, 0, 0]  # would shrink position 0 too: it is put back as it was)


def test_wen_optimises_only_the_conditional_embedding_from_the_same_seed(pipe):
    """The unconditional embedding and the start-of-text embedding are fed unchanged, the other tokens move, the
    first-step score goes down; the same seed is used (a zero-iteration run is exactly no mitigation)."""
    s = Sampler(pipe, device=CPU, steps=3, guidance=5.0, batch_size=1)
    req = ImageRequest(CAPTIONS[2], 77)
    plain = s.sample_batch([req])[0]
    wen = mitigate(req.prompt, req.seed, MitigationSettings("wen", wen_target_loss=0.0, wen_max_iters=3))
    rec = UNetRecorder(pipe.unet)
    try:
        out = s.sample_batch([wen])[0]
    finally:
        rec.close()
    fed = rec.calls[-1]  # the last sampling call
    torch.testing.assert_close(fed[0], encode_prompts(pipe, [""], CPU)[0], rtol=0, atol=0)
    encoded = encode_prompts(pipe, [req.prompt], CPU)[0]
    torch.testing.assert_close(fed[1][0], encoded[0], rtol=0, atol=0)
    assert (fed[1][1:] - encoded[1:]).abs().max() > 1e-4
    assert out.wen_iterations == 3
    assert out.wen_score_before == pytest.approx(plain.detect_first, rel=1e-5)
    assert out.detect_first < plain.detect_first
    assert np.abs(pixels([out]) - pixels([plain])).max() > 0
    assert np.array_equal(pixels(s.sample_batch([wen])), pixels([out]))  # seeded, deterministic
    idle = mitigate(req.prompt, req.seed, MitigationSettings("wen", wen_max_iters=0))
    assert np.array_equal(pixels(s.sample_batch([idle])), pixels([plain]))


def test_loss_mask_leaves_out_samples_above_the_threshold():
    scores = torch.tensor([0.5, 2.0, 1.0, 3.5])
    assert loss_mask(scores, 1.0).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert loss_mask(scores, None).tolist() == [1.0, 1.0, 1.0, 1.0]
