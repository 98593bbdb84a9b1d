"""The batched sampler: reproducibility, batch independence, agreement with diffusers, and what the UNet is fed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from copying_study.diffusion.models import encode_prompts
from copying_study.diffusion.sample import (
    SCHEDULERS,
    ImageRequest,
    MitigationSettings,
    Sampler,
    mitigate,
)
from copying_study.utils.images import encode_png
from copying_study.utils.seeding import torch_generator

from .conftest import CAPTIONS, small_pipeline

CPU = torch.device("cpu")


def sampler(pipe, **kw) -> Sampler:
    args = {"device": CPU, "steps": 4, "guidance": 7.5, "batch_size": 3}
    return Sampler(pipe, **{**args, **kw})


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i) for i in images]).astype(np.int16)


def requests(n: int = 5) -> list[ImageRequest]:
    return [ImageRequest(CAPTIONS[i % len(CAPTIONS)], 1000 + i) for i in range(n)]


def test_same_parameters_and_seeds_give_byte_identical_pngs(pipe):
    first = [encode_png(i) for i in sampler(pipe).generate(requests())]
    again = [encode_png(i) for i in sampler(pipe).generate(requests())]
    assert first == again
    assert len(set(first)) == len(first)  # different seeds/prompts really give different images


def assert_rounding_only(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding: with several BLAS threads a row's result can depend on its place in a GEMM."""
    assert a.shape == b.shape
    assert np.mean(a != b) < 0.01
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_an_image_does_not_depend_on_its_batch_mates_or_position(pipe):
    s = sampler(pipe)
    reqs = requests(5)
    ref = pixels(s.generate(reqs))
    np.testing.assert_array_equal(pixels(s.generate(reqs)), ref)  # a re-run is bit-identical
    reordered = pixels(s.generate(reqs[::-1]))[::-1]
    alone = pixels([s.generate_batch([r])[0] for r in reqs])
    with_strangers = pixels(s.generate_batch([ImageRequest("a blue square", 7), reqs[3]]))[1]
    assert_rounding_only(reordered, ref)
    assert_rounding_only(alone, ref)
    assert_rounding_only(with_strangers, ref[3])
    assert np.abs(pixels(s.generate(requests(5)[1:2])).astype(int) - ref[:1].astype(int)).max() > 2  # not a no-op


def test_other_batch_sizes_agree_up_to_float_rounding(pipe):
    # CPU kernels are picked by shape, so another batch size may flip a rare pixel by rounding; nothing more.
    ref = pixels(sampler(pipe, batch_size=5).generate(requests()))
    for bs in (1, 2):
        other = pixels(sampler(pipe, batch_size=bs).generate(requests()))
        assert np.mean(other != ref) < 0.01
        assert np.abs(other - ref).mean() < 0.05


def test_matches_diffusers_pipeline_call(pipe):
    s = sampler(pipe, batch_size=1)
    ours = pixels(s.generate([ImageRequest("a red circle", 42)]))
    side = s.resolution // s.scale
    latents = torch.randn((1, pipe.unet.config.in_channels, side, side), generator=torch_generator(42))
    theirs = StableDiffusionPipeline(**pipe.components)(
        "a red circle", num_inference_steps=4, guidance_scale=7.5, height=s.resolution, width=s.resolution,
        latents=latents, output_type="pil",
    ).images
    np.testing.assert_array_equal(ours, pixels(theirs))


@pytest.fixture(scope="module")
def sd_schedule_pipe():
    """Stable Diffusion's beta schedule (scaled_linear), which every scheduler supports."""
    return small_pipeline(beta_schedule="scaled_linear")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_is_seeded_and_reproducible(sd_schedule_pipe, name):
    a = pixels(sampler(sd_schedule_pipe, scheduler=name, steps=3).generate(requests(2)))
    b = pixels(sampler(sd_schedule_pipe, scheduler=name, steps=3).generate(requests(2)))
    c = pixels(sampler(sd_schedule_pipe, scheduler=name, steps=3).generate(requests(2)[::-1]))[::-1]
    np.testing.assert_array_equal(a, b)
    assert_rounding_only(a, c)
    assert a.std() > 0


def test_non_finite_samples_raise_a_clear_error(pipe):
    # Euler-ancestral diverges on the tiny model's squaredcos schedule (sigma_max ~ 2e4): say so, never save NaNs
    with pytest.raises(FloatingPointError, match="scheduler 'euler_a'"):
        sampler(pipe, scheduler="euler_a", steps=3).generate(requests(1))


def test_none_feeds_uncond_then_cond_embeddings(pipe, recorder):
    s = sampler(pipe, steps=2, batch_size=2)
    s.generate_batch([ImageRequest("a red circle", 1), ImageRequest("a blue square", 2)])
    fed = recorder.calls[0]
    cond = encode_prompts(pipe, ["a red circle", "a blue square"], CPU)
    uncond = encode_prompts(pipe, [""], CPU).expand(2, -1, -1)
    torch.testing.assert_close(fed, torch.cat([uncond, cond]), rtol=0, atol=0)
    assert all(torch.equal(c, fed) for c in recorder.calls)  # the same conditioning at every step


def test_gn_noises_the_conditional_embedding_only_by_default(pipe, recorder):
    lam = 0.25
    s = sampler(pipe, steps=1, batch_size=2)
    reqs = [mitigate(p, seed, MitigationSettings("gn", gn_lambda=lam)) for p, seed in (("a red circle", 1),
                                                                                      ("a red circle", 2))]
    assert [r.prompt for r in reqs] == ["a red circle", "a red circle"]  # gn leaves the text alone
    s.generate_batch(reqs)
    fed = recorder.calls[0]
    clean = encode_prompts(pipe, ["a red circle"], CPU)[0]
    uncond = encode_prompts(pipe, [""], CPU)[0]
    torch.testing.assert_close(fed[0], uncond, rtol=0, atol=0)
    torch.testing.assert_close(fed[1], uncond, rtol=0, atol=0)
    delta = fed[2:] - clean
    assert abs(float(delta.std()) - lam) < 0.05 * lam + 0.01
    assert not torch.allclose(delta[0], delta[1])  # each image has its own noise


def test_gn_uncond_option_noises_both(pipe, recorder):
    s = sampler(pipe, steps=1, batch_size=1)
    s.generate_batch([mitigate("a red circle", 3, MitigationSettings("gn", gn_lambda=0.2, gn_uncond=True))])
    fed = recorder.calls[0]
    uncond = encode_prompts(pipe, [""], CPU)[0]
    clean = encode_prompts(pipe, ["a red circle"], CPU)[0]
    assert abs(float((fed[0] - uncond).std()) - 0.2) < 0.02
    assert abs(float((fed[1] - clean).std()) - 0.2) < 0.02
    assert not torch.allclose(fed[0] - uncond, fed[1] - clean)


@pytest.mark.parametrize("name", ["rt", "cwr", "rna", "rc"])
def test_text_mitigations_feed_the_mitigated_prompt_and_clean_uncond(pipe, recorder, name):
    vocab = ["apple", "house", "river"]
    req = mitigate("a red circle", 5, MitigationSettings(name), vocab)
    assert req.prompt != "a red circle" and req.gn_lambda == 0
    sampler(pipe, steps=1, batch_size=1).generate_batch([req])
    fed = recorder.calls[0]
    torch.testing.assert_close(fed[1], encode_prompts(pipe, [req.prompt], CPU)[0], rtol=0, atol=0)
    torch.testing.assert_close(fed[0], encode_prompts(pipe, [""], CPU)[0], rtol=0, atol=0)


def test_guidance_one_turns_classifier_free_guidance_off(pipe, recorder):
    sampler(pipe, steps=1, batch_size=2, guidance=1.0).generate_batch([ImageRequest("a red circle", 1)])
    assert recorder.calls[0].shape[0] == 2  # the padded batch of 2, no unconditional half


def test_bad_settings_are_rejected(pipe):
    with pytest.raises(ValueError, match="unknown scheduler 'lms'"):
        sampler(pipe, scheduler="lms")
    with pytest.raises(ValueError, match="steps"):
        sampler(pipe, steps=0)
    with pytest.raises(ValueError, match="not a multiple"):
        sampler(pipe, resolution=15)
    with pytest.raises(ValueError, match="unknown mitigation 'blur'"):
        MitigationSettings("blur")
    with pytest.raises(ValueError, match="exceed batch_size"):
        sampler(pipe, batch_size=1).generate_batch(requests(2))


def test_vae_upcast_only_for_float16_and_cuda_graph_setting():
    """SD's VAE asks for float32 decoding (``force_upcast``) because float16 overflows; bfloat16 has float32's range
    and decodes as it is, as diffusers does. CUDA graphs are for CUDA only and recorded in ``info()``."""
    from copying_study.diffusion.reference_shapes import build_sd21_pipeline

    sd = build_sd21_pipeline("tiny")
    assert sd.vae.config.force_upcast
    assert Sampler(sd, device=CPU, dtype="float16").vae_dtype == torch.float32
    assert Sampler(sd, device=CPU, dtype="bfloat16").vae_dtype == torch.bfloat16
    plain = Sampler(sd, device=CPU, dtype="float32")
    assert plain.vae_dtype == torch.float32 and plain.info()["cuda_graph"] == "off"
    with pytest.raises(ValueError, match="cuda_graph=true needs a CUDA device"):
        Sampler(sd, device=CPU, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph must be auto, true or false"):
        Sampler(sd, device=CPU, cuda_graph="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_gives_the_plain_calls_images():
    from copying_study.diffusion.reference_shapes import build_sd21_pipeline

    cuda = torch.device("cuda")
    reqs = [ImageRequest(CAPTIONS[i], 10 + i) for i in range(5)]
    graphed = Sampler(build_sd21_pipeline("tiny"), device=cuda, steps=6, batch_size=4, scheduler="dpm")
    plain = Sampler(build_sd21_pipeline("tiny"), device=cuda, steps=6, batch_size=4, scheduler="dpm",
                    cuda_graph=False)
    a, b = pixels(graphed.generate(reqs)), pixels(plain.generate(reqs))
    assert graphed.info()["cuda_graph"] == "on"
    assert np.abs(a - b).max() <= 1
