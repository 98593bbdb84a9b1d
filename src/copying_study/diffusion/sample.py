"""Batched, seeded text-to-image sampling with inference-time mitigations (paper §4 and §7).

One sampler serves the tiny in-code models and Stable Diffusion alike: it drives the pipeline's components
(tokenizer + text encoder, UNet, VAE, scheduler) directly instead of calling ``pipeline.__call__`` once per prompt.

* Text is encoded a batch at a time; classifier-free guidance runs one UNet call on ``[uncond; cond]``.
* Every image carries its own seed: its initial noise, the noise of stochastic schedulers (DDPM, Euler-ancestral)
  and its Gaussian-noise mitigation are drawn from generators seeded by that image's seed alone, so the batch an
  image lands in never changes it (same parameters + seeds -> identical images on CPU, whatever the batch size).
* Inference-time mitigations (``none | gn | rt | cwr | rna | rc | wen | delayed | opposite``) act per image and
  are seeded by the image's seed: ``rt/cwr/rna/rc`` rewrite the prompt
  (``copying_study.data.captions.perturb_caption``), ``gn`` adds ``lambda * N(0, I)`` to the *conditional* text
  embedding (and to the unconditional one only when ``gn_uncond`` is set, as the paper's code did). ``wen``
  (Wen et al., ICLR 2024) optimises the conditional embedding to lower the first-step detection score from the
  image's own ``x_T``, then samples from it with the same seed; ``delayed`` and ``opposite`` (Jain et al., CVPR
  2025) use guidance scale 0, or a negative scale, at timesteps above a transition timestep and the run's scale
  after it.
* Every image carries Wen et al.'s detection scores (``copying_study.diffusion.detection``): the L2 norm of the
  text-conditional noise prediction at the first step and averaged over all steps. They come free under
  classifier-free guidance; with guidance off (scale <= 1) there is no unconditional prediction and they are NaN.
* On CUDA the models run in bf16 (or fp16) with PyTorch's scaled-dot-product attention, and the UNet call, whose
  shape every padded batch shares, is captured once in a CUDA graph and replayed at every step (``cuda_graph``):
  the same kernels without the Python and launch overhead of some thousand small kernels per call. A capture that
  fails falls back to plain calls, and the record says so.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copying_study.data.captions import (
    INFERENCE_MITIGATIONS,
    TEXT_MITIGATIONS,
    base_caption,
    check_choice,
    perturb_caption,
)
from copying_study.diffusion.detection import (
    WenSettings,
    alpha_bar_at,
    epsilon_factor,
    optimise_embeddings,
    text_conditional_norm,
)
from copying_study.diffusion.models import add_embedding_noise, encode_prompts
from copying_study.utils.device import describe_device
from copying_study.utils.progress import progress
from copying_study.utils.seeding import derive_seed, numpy_rng, python_rng, torch_generator

logger = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROMPT_SOURCES = ("training", "file", "class")
PROMPT_FILE_TYPES = (".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class Prompt:
    """A prompt before any mitigation, and the training image whose caption it is (``None`` if none)."""

    text: str
    source_image_id: str | None = None


def training_prompts(captions: Mapping[str, str], n: int, seed: int) -> list[Prompt]:
    """``n`` training captions drawn uniformly with replacement (as the paper's ``np.random.choice``), seeded;
    ``captions`` maps image id -> the caption the model was trained with."""
    if not captions:
        raise ValueError("prompts 'training' needs the training record's captions; the record has none")
    ids = sorted(captions)
    picks = numpy_rng(seed, "generate", "prompts", "training").choice(len(ids), size=n, replace=True)
    return [Prompt(str(captions[ids[i]]), ids[i]) for i in picks]


def read_prompts_file(path: str | Path, column: str = "prompt") -> list[str]:
    """Prompts from a file: ``.txt`` (one per line), ``.csv`` or ``.parquet`` (column ``column``, e.g. the
    DiffusionDB metadata). Blank prompts are dropped; an empty result is an error."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {path} does not exist")
    suffix = path.suffix.lower()
    check_choice(suffix, PROMPT_FILE_TYPES, "prompts file type")
    if suffix == ".txt":
        texts = path.read_text(encoding="utf-8").splitlines()
    else:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        if column not in frame.columns:
            raise ValueError(f"prompts file {path} has no column '{column}' (columns: {', '.join(frame.columns)})")
        texts = frame[column].dropna().astype(str).tolist()
    prompts = [t.strip() for t in texts if t.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} contains no prompts")
    return prompts


def file_prompts(prompts: Sequence[str], n: int, seed: int) -> list[Prompt]:
    """``n`` prompts sampled without replacement (seeded), or with replacement when the file has fewer."""
    replace = n > len(prompts)
    if replace:
        logger.warning("the prompts file has %d prompts for %d needed: sampling with replacement", len(prompts), n)
    picks = numpy_rng(seed, "generate", "prompts", "file").choice(len(prompts), size=n, replace=replace)
    return [Prompt(prompts[i]) for i in picks]


def class_prompts(class_names: Sequence[str], n: int, seed: int) -> list[Prompt]:
    """``n`` class prompts "An image of <class>" for classes drawn uniformly with replacement (seeded)."""
    names = sorted({str(c) for c in class_names if c is not None and str(c).strip()})
    if not names:
        raise ValueError("prompts 'class' needs class names (generate.class_names or class labels in the data)")
    picks = numpy_rng(seed, "generate", "prompts", "class").choice(len(names), size=n, replace=True)
    return [Prompt(base_caption({"class_label": names[i]}, "class")) for i in picks]


def image_seeds(seed: int, n_images: int) -> list[int]:
    """One recorded seed per image, derived from the run's seed and the image's index."""
    return [derive_seed(seed, "generate", "image", i) for i in range(n_images)]


def expand_prompts(prompts: Sequence[Prompt], n_images: int, images_per_prompt: int) -> list[Prompt]:
    """Each prompt repeated ``images_per_prompt`` times, cut to ``n_images``."""
    if n_images < 1 or images_per_prompt < 1:
        raise ValueError(f"n_images and images_per_prompt must be >= 1, got {n_images} and {images_per_prompt}")
    if len(prompts) < math.ceil(n_images / images_per_prompt):
        raise ValueError("too few prompts for n_images / images_per_prompt")
    return [prompts[i // images_per_prompt] for i in range(n_images)]


@dataclass(frozen=True)
class MitigationSettings:
    """One inference-time mitigation and its strengths (paper §7).

    ``p``: probability that a text mitigation changes a prompt; ``n``: words/numbers added or replaced by
    ``rt``/``cwr``/``rna``; ``rc_words``: length of an ``rc`` random caption; ``rna_high``: ``rna`` draws integers in
    ``[0, rna_high]``; ``gn_lambda``: scale of the Gaussian noise of ``gn``; ``gn_uncond``: also noise the
    unconditional embedding. ``wen_lr``, ``wen_max_iters``, ``wen_target_loss``: Wen et al.'s embedding
    optimisation (``wen_target_quantile``: the target is that quantile of the run's prompt-level scores instead,
    :func:`copying_study.diffusion.guard.calibrate_wen_target`); ``delayed_transition``: ``delayed`` uses guidance 0 at timesteps above it; ``opposite_scale``
    and ``opposite_transition``: ``opposite`` uses that (negative) scale at timesteps above its transition.
    """

    name: str = "none"
    p: float = 1.0
    n: int = 2
    rc_words: int = 4
    rna_high: int = 10**6
    gn_lambda: float = 0.1
    gn_uncond: bool = False
    wen_lr: float = 0.05
    wen_max_iters: int = 10
    wen_target_loss: float = 3.0
    wen_target_quantile: float | None = None
    delayed_transition: int = 500
    opposite_scale: float = -2.0
    opposite_transition: int = 650

    def __post_init__(self) -> None:
        check_choice(self.name, INFERENCE_MITIGATIONS, "mitigation")
        WenSettings(self.wen_lr, self.wen_max_iters, self.wen_target_loss)  # checks them
        if self.delayed_transition < 0 or self.opposite_transition < 0:
            raise ValueError("mitigation delayed_transition and opposite_transition must be timesteps >= 0")
        if self.opposite_scale > 0:
            raise ValueError(f"mitigation opposite_scale must be <= 0 (opposite guidance), got {self.opposite_scale}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"mitigation p must be in [0, 1], got {self.p}")
        if self.n < 1 or self.rc_words < 1 or self.rna_high < 0:
            raise ValueError("mitigation n and rc_words must be >= 1 and rna_high >= 0")
        if self.gn_lambda < 0:
            raise ValueError(f"mitigation gn_lambda must be >= 0, got {self.gn_lambda}")
        if self.wen_target_quantile is not None and not 0.0 < self.wen_target_quantile < 1.0:
            raise ValueError(f"mitigation wen_target_quantile must be in (0, 1), got {self.wen_target_quantile}")


@dataclass(frozen=True)
class ImageRequest:
    """What one image is generated from: the prompt fed to the text encoder, its seed, embedding noise, the
    guidance scale used at timesteps above ``transition_t`` (``early_guidance``; ``None``: the sampler's scale at
    every step) and Wen et al.'s embedding optimisation (``wen``; ``None``: off)."""

    prompt: str
    seed: int
    gn_lambda: float = 0.0
    gn_uncond: bool = False
    early_guidance: float | None = None
    transition_t: int = 0
    wen: WenSettings | None = None


def mitigate(
    original_prompt: str, seed: int, settings: MitigationSettings, vocab: Sequence[str] = ()
) -> ImageRequest:
    """The request for one image under ``settings``; every random choice derives from the image's ``seed``."""
    if settings.name in TEXT_MITIGATIONS:
        rng = python_rng(seed, "mitigation", settings.name)
        prompt = perturb_caption(
            original_prompt, settings.name, rng, vocab=vocab, p=settings.p, n=settings.n,
            rc_words=settings.rc_words, rna_high=settings.rna_high,
        )
        return ImageRequest(prompt=prompt, seed=seed)
    if settings.name == "gn":
        return ImageRequest(original_prompt, seed, gn_lambda=settings.gn_lambda, gn_uncond=settings.gn_uncond)
    if settings.name == "delayed":
        return ImageRequest(original_prompt, seed, early_guidance=0.0, transition_t=settings.delayed_transition)
    if settings.name == "opposite":
        return ImageRequest(original_prompt, seed, early_guidance=settings.opposite_scale,
                            transition_t=settings.opposite_transition)
    if settings.name == "wen":
        return ImageRequest(original_prompt, seed, wen=WenSettings(settings.wen_lr, settings.wen_max_iters,
                                                                   settings.wen_target_loss))
    return ImageRequest(original_prompt, seed)


@dataclass
class Sample:
    """One generated image with its detection scores (NaN when guidance is off) and, under ``wen``, the
    embedding optimisation's iterations and first-step score before it (NaN / 0 otherwise)."""

    image: Image.Image
    detect_first: float = float("nan")
    detect_mean: float = float("nan")
    wen_iterations: int = 0
    wen_score_before: float = float("nan")


def make_scheduler(name: str, config: Any):
    """A fresh scheduler of the named kind (``SCHEDULERS``) built from the model's scheduler config."""
    import diffusers

    check_choice(name, tuple(SCHEDULERS), "scheduler")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` = bf16 on CUDA (fp16 where bf16 is unsupported), float32 elsewhere; or a name of ``DTYPES``."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    check_choice(name, ("auto", *DTYPES), "dtype")
    return DTYPES[name]


def vae_scale_factor(pipe: Any) -> int:
    """Pixels per latent cell: the pipeline's own value, else 2^(VAE blocks - 1)."""
    factor = getattr(pipe, "vae_scale_factor", None)
    if factor:
        return int(factor)
    blocks = getattr(pipe.vae.config, "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else 1


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Decoder output in [-1, 1], [B, 3, H, W] -> RGB PIL images (rounded as diffusers does)."""
    arr = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(x) for x in (arr * 255).round().astype(np.uint8)]


class Sampler:
    """Batched classifier-free-guidance sampler over a diffusers text-to-image pipeline's components.

    ``pipe`` needs ``tokenizer``, ``text_encoder``, ``unet``, ``vae`` (``decode(z).sample`` and
    ``config.scaling_factor``) and ``scheduler``. The components are moved to ``device`` in ``dtype``.
    """

    def __init__(
        self,
        pipe: Any,
        *,
        device: torch.device,
        scheduler: str = "ddim",
        steps: int = 50,
        guidance: float = 7.5,
        resolution: int | None = None,
        batch_size: int = 8,
        eta: float = 0.0,
        dtype: str = "auto",
        cuda_graph: bool | str = "auto",
    ) -> None:
        for part in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
            if getattr(pipe, part, None) is None:
                raise ValueError(f"the model has no {part}: a text-to-image diffusers pipeline is needed")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.pipe = pipe
        self.device = device
        self.dtype = resolve_dtype(dtype, device)
        self.scheduler_name = scheduler
        self.scheduler_config = pipe.scheduler.config
        make_scheduler(scheduler, self.scheduler_config)  # fail early on a bad name
        self.steps = int(steps)
        self.guidance = float(guidance)
        self.eta = float(eta)
        self.batch_size = int(batch_size)
        self.scale = vae_scale_factor(pipe)
        self.resolution = int(resolution or pipe.unet.config.sample_size * self.scale)
        if self.resolution % self.scale:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE factor {self.scale}")
        # a VAE that asks for it (SD's, whose fp16 decode overflows) decodes in float32 when the model runs in
        # float16, as diffusers does; bfloat16 has float32's range and decodes as it is
        upcast = self.dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False)
        self.vae_dtype = torch.float32 if upcast else self.dtype
        if cuda_graph not in ("auto", True, False):
            raise ValueError(f"cuda_graph must be auto, true or false, got {cuda_graph!r}")
        self.cuda_graph = device.type == "cuda" if cuda_graph == "auto" else bool(cuda_graph)
        if self.cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=true needs a CUDA device (this sampler runs on {device})")
        self.graph_status = "on" if self.cuda_graph else "off"
        self._graph: GraphedUNet | None = None
        for module, dtype_ in ((pipe.text_encoder, self.dtype), (pipe.unet, self.dtype), (pipe.vae, self.vae_dtype)):
            module.to(device) if module.dtype == dtype_ else module.to(device=device, dtype=dtype_)
            module.eval()
        self._uncond: torch.Tensor | None = None

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance is on for guidance scales above 1 (as in diffusers)."""
        return self.guidance > 1.0

    def info(self) -> dict[str, Any]:
        """Run-level settings, for the records of every output."""
        attn = sorted({type(p).__name__ for p in getattr(self.pipe.unet, "attn_processors", {}).values()})
        return {
            "scheduler": self.scheduler_name,
            "scheduler_class": SCHEDULERS[self.scheduler_name],
            "prediction_type": self.scheduler_config.get("prediction_type", "epsilon"),
            "steps": self.steps,
            "guidance": self.guidance,
            "eta": self.eta,
            "resolution": self.resolution,
            "batch_size": self.batch_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "vae_dtype": str(self.vae_dtype).replace("torch.", ""),
            "device": describe_device(self.device),
            "attention": ",".join(attn),
            "cuda_graph": self.graph_status,
            "detection_scores": ("L2 norm of eps(x_t,c) - eps(x_t,0) over the whole latent, before the guidance "
                                 f"scale ({self.prediction_type} outputs on the eps scale); first step and mean "
                                 "over steps; computed from the UNet outputs outside the CUDA graph, so both paths "
                                 "record them" if self.cfg else
                                 "not computed: guidance <= 1, no unconditional prediction"),
        }

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings [B, L, D] of ``prompts`` in the model's dtype."""
        return encode_prompts(self.pipe, list(prompts), self.device).to(self.dtype)

    def _uncond_embedding(self) -> torch.Tensor:
        if self._uncond is None:
            self._uncond = self.encode([""])
        return self._uncond

    @staticmethod
    def _noised(emb: torch.Tensor, requests: Sequence[ImageRequest], purpose: str) -> torch.Tensor:
        """Add each request's Gaussian noise to its row; drawn on CPU in float32 from the image's own seed."""
        if not any(r.gn_lambda > 0 for r in requests):
            return emb
        rows = []
        for row, r in zip(emb, requests, strict=True):
            if r.gn_lambda > 0:
                gen = torch_generator(derive_seed(r.seed, "gn", purpose))
                row = add_embedding_noise(row[None].float().cpu(), r.gn_lambda, gen)[0].to(emb)
            rows.append(row)
        return torch.stack(rows)

    def conditioning(self, requests: Sequence[ImageRequest]) -> torch.Tensor:
        """The ``encoder_hidden_states`` fed to the UNet: ``[uncond; cond]`` with CFG, else ``cond``."""
        cond = self._noised(self.encode([r.prompt for r in requests]), requests, "cond")
        if not self.cfg:
            return cond
        uncond = self._uncond_embedding().expand(len(requests), -1, -1)
        noisy_uncond = [r if r.gn_uncond else ImageRequest(r.prompt, r.seed) for r in requests]
        uncond = self._noised(uncond, noisy_uncond, "uncond")
        return torch.cat([uncond, cond])

    def initial_latents(self, requests: Sequence[ImageRequest]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Per-image initial noise drawn on CPU in float32 from each image's seed, plus the generators (which
        stochastic schedulers go on drawing from, per image)."""
        side = self.resolution // self.scale
        shape = (1, self.pipe.unet.config.in_channels, side, side)
        gens = [torch_generator(r.seed) for r in requests]
        noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
        return noise.to(device=self.device, dtype=self.dtype), gens

    def generate_batch(self, requests: Sequence[ImageRequest]) -> list[Image.Image]:
        """Images for one batch of at most ``batch_size`` requests (:meth:`sample_batch` without the scores)."""
        return [s.image for s in self.sample_batch(requests)]

    def sample_batch(self, requests: Sequence[ImageRequest]) -> list[Sample]:
        """Images and detection scores for one batch of at most ``batch_size`` requests.

        A short batch is padded (with copies of its last request) to exactly ``batch_size``: every network call
        then has the same shape, and CPU/GPU kernels, which are chosen by shape, compute each image the same way
        whichever images share its batch and wherever it sits in it.
        """
        if not requests:
            return []
        if len(requests) > self.batch_size:
            raise ValueError(f"{len(requests)} requests exceed batch_size {self.batch_size}: use generate()")
        n_real = len(requests)
        requests = list(requests) + [requests[-1]] * (self.batch_size - n_real)
        self._check_guided(requests)
        scheduler = self._scheduler()
        with torch.inference_mode():
            hidden = self.conditioning(requests)
            latents, gens = self.initial_latents(requests)
            latents = latents * scheduler.init_noise_sigma
        wen = None
        if any(r.wen is not None for r in requests):
            wen = self._optimise_embeddings(requests, hidden, latents)
            hidden = torch.cat([hidden[: len(requests)], wen.cond])
        with torch.inference_mode():
            latents, first, mean = self._denoise(scheduler, requests, hidden, latents, gens)
            latents = latents.to(self.vae_dtype) / self.pipe.vae.config.scaling_factor
            decoded = self.pipe.vae.decode(latents, return_dict=False)[0]
        images = to_pil(decoded[:n_real])
        return [
            Sample(img, float(first[i]), float(mean[i]),
                   wen.iterations[i] if wen is not None and requests[i].wen is not None else 0,
                   wen.score_before[i] if wen is not None and requests[i].wen is not None else float("nan"))
            for i, img in enumerate(images)
        ]

    def _check_guided(self, requests: Sequence[ImageRequest]) -> None:
        """``wen``, ``delayed`` and ``opposite`` act on classifier-free guidance: with guidance off they cannot."""
        if not self.cfg and any(r.wen is not None or r.early_guidance is not None for r in requests):
            raise ValueError(f"the wen, delayed and opposite mitigations need classifier-free guidance "
                             f"(generate.guidance > 1), but guidance is {self.guidance}")

    def _scheduler(self):
        scheduler = make_scheduler(self.scheduler_name, self.scheduler_config)
        scheduler.set_timesteps(self.steps, device=self.device)
        return scheduler

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    def _factor(self, scheduler, t: torch.Tensor) -> float:
        """The factor from a difference of model outputs at timestep ``t`` to a difference of noise predictions."""
        return float(epsilon_factor(self.prediction_type, alpha_bar_at(scheduler, t)))

    def _guide(self, uncond: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
               requests: Sequence[ImageRequest]) -> torch.Tensor:
        """Classifier-free guidance; rows whose request sets ``early_guidance`` use it at timesteps above their
        ``transition_t`` (the other rows are computed exactly as without them)."""
        out = uncond + self.guidance * (cond - uncond)
        early = [r.early_guidance is not None and float(t) > r.transition_t for r in requests]
        if not any(early):
            return out
        scales = torch.tensor([r.early_guidance if e else 0.0 for r, e in zip(requests, early, strict=True)],
                              device=out.device, dtype=out.dtype).view(-1, *[1] * (out.ndim - 1))
        mask = torch.tensor(early, device=out.device).view_as(scales)
        return torch.where(mask, uncond + scales * (cond - uncond), out)

    def _denoise(self, scheduler, requests: Sequence[ImageRequest], hidden: torch.Tensor, latents: torch.Tensor,
                 gens: list[torch.Generator]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The sampling loop: final latents, and each row's first-step and step-averaged detection score."""
        step_kwargs = {}
        step_params = inspect.signature(scheduler.step).parameters
        if "generator" in step_params:
            step_kwargs["generator"] = gens
        if "eta" in step_params:
            step_kwargs["eta"] = self.eta
        first = total = None
        for i, t in enumerate(scheduler.timesteps):
            model_in = torch.cat([latents, latents]) if self.cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            out = self._unet(model_in, t, hidden)
            if self.cfg:
                uncond, cond = out.chunk(2)
                norms = text_conditional_norm(uncond, cond, self._factor(scheduler, t))
                first, total = (norms, norms.clone()) if i == 0 else (first, total + norms)
                out = self._guide(uncond, cond, t, requests)
            latents = scheduler.step(out, t, latents, return_dict=False, **step_kwargs)[0]
        if not torch.isfinite(latents).all():
            raise FloatingPointError(
                f"sampling produced NaN/inf with scheduler '{self.scheduler_name}' on this model (its scheduler "
                f"config: beta_schedule={self.scheduler_config.get('beta_schedule')}); try another scheduler"
            )
        if first is None:
            nan = np.full(len(requests), np.nan)
            return latents, nan, nan
        return latents, first.cpu().numpy(), (total / len(scheduler.timesteps)).cpu().numpy()

    def _first_step_model_input(self, scheduler, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = scheduler.timesteps[0]
        return scheduler.scale_model_input(torch.cat([latents, latents]), t0), t0

    def _optimise_embeddings(self, requests: Sequence[ImageRequest], hidden: torch.Tensor, latents: torch.Tensor):
        """Wen et al.: each ``wen`` row's conditional embedding optimised from its own ``x_T`` (the other rows are
        returned as they are). Runs with gradients, outside inference mode, on plain (not graphed) UNet calls."""
        settings = {r.wen for r in requests if r.wen is not None}
        if len(settings) > 1:
            raise ValueError("one batch holds requests with different wen settings")
        scheduler = self._scheduler()  # its own: some schedulers keep a step index once scale_model_input ran
        n = len(requests)
        uncond, cond = hidden[:n].clone(), hidden[n:].clone()
        model_in, t0 = self._first_step_model_input(scheduler, latents.clone())
        factor = self._factor(scheduler, t0)

        def scores(c: torch.Tensor) -> torch.Tensor:
            out = self.pipe.unet(model_in, t0, encoder_hidden_states=torch.cat([uncond, c]), return_dict=False)[0]
            u, v = out.chunk(2)
            return text_conditional_norm(u, v, factor)

        return optimise_embeddings(scores, cond, [r.wen is not None for r in requests], settings.pop())

    @torch.inference_mode()
    def first_step_scores(self, requests: Sequence[ImageRequest]) -> np.ndarray:
        """The first-step detection score of each request from its own ``x_T``, without sampling (one UNet call per
        batch): Wen et al.'s prompt-level score, for the copy guard to decide before generating."""
        if not self.cfg:
            raise ValueError(f"detection scores need classifier-free guidance (generate.guidance > 1), but "
                             f"guidance is {self.guidance}")
        out: list[float] = []
        for start in range(0, len(requests), self.batch_size):
            batch = list(requests[start:start + self.batch_size])
            n_real = len(batch)
            batch += [batch[-1]] * (self.batch_size - n_real)
            scheduler = self._scheduler()
            latents, _ = self.initial_latents(batch)
            model_in, t0 = self._first_step_model_input(scheduler, latents * scheduler.init_noise_sigma)
            u, c = self._unet(model_in, t0, self.conditioning(batch)).chunk(2)
            out.extend(text_conditional_norm(u, c, self._factor(scheduler, t0))[:n_real].cpu().tolist())
        return np.asarray(out, dtype=np.float64)

    def _unet(self, sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """One UNet call: replayed from the CUDA graph when it is on (captured at the first call), else plain."""
        if self.cuda_graph and self._graph is None:
            try:
                self._graph = GraphedUNet(self.pipe.unet, sample, t, hidden)
            except Exception as exc:  # capture is refused by some ops/drivers: run plainly, and record why
                logger.warning("CUDA-graph capture of the UNet failed (%s: %s); running it without", type(exc).__name__,
                               exc)
                self.cuda_graph = False
                self.graph_status = f"failed, plain calls ({type(exc).__name__}: {exc})"[:300]
        if self._graph is not None:
            return self._graph(sample, t, hidden)
        return self.pipe.unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]

    def generate(self, requests: Sequence[ImageRequest], desc: str = "generate") -> list[Image.Image]:
        """Images for all ``requests``, in order, ``batch_size`` at a time."""
        return [s.image for s in self.sample(requests, desc)]

    def sample(self, requests: Sequence[ImageRequest], desc: str = "generate") -> list[Sample]:
        """Images with their detection scores for all ``requests``, in order, ``batch_size`` at a time."""
        out: list[Sample] = []
        starts = range(0, len(requests), self.batch_size)
        for start in progress(starts, desc=desc, total=len(starts), unit="batch"):
            out.extend(self.sample_batch(requests[start:start + self.batch_size]))
        return out


class GraphedUNet:
    """A UNet's forward pass for one fixed input shape, captured in a CUDA graph and replayed.

    The inputs are copied into static tensors, the graph replays the captured kernels, and a copy of the static
    output is returned (the next replay overwrites it). The timestep must be a tensor on
    the device (the scheduler's ``timesteps`` are), so that each step's value is read by the graph, not baked in.
    """

    def __init__(self, unet: Any, sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor, warmup: int = 2):
        if not torch.is_tensor(t) or t.device != sample.device:
            raise ValueError("a CUDA-graph UNet needs the timestep as a tensor on the sample's device")
        self.unet = unet
        self.sample, self.t, self.hidden = sample.clone(), t.clone(), hidden.clone()
        side = torch.cuda.Stream(sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(warmup):
                self._forward()
        torch.cuda.current_stream(sample.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._forward()

    def _forward(self) -> torch.Tensor:
        return self.unet(self.sample, self.t, encoder_hidden_states=self.hidden, return_dict=False)[0]

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if sample.shape != self.sample.shape or hidden.shape != self.hidden.shape:
            raise ValueError(f"the CUDA graph was captured for {tuple(self.sample.shape)} / "
                             f"{tuple(self.hidden.shape)}, not {tuple(sample.shape)} / {tuple(hidden.shape)}")
        self.sample.copy_(sample)
        self.t.copy_(t)
        self.hidden.copy_(hidden)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites self.out; a scheduler may keep what it was given
