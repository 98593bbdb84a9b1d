"""Text-to-image diffusion models behind one interface: a ``StableDiffusionPipeline``.

Three sources, one code path (training and sampling never branch on which one is used):

* a local diffusers folder (``save_pretrained`` layout, e.g. a downloaded Stable Diffusion 2.1);
* a Hugging Face id resolved **from the local cache only** (``local_files_only=True``; nothing is downloaded);
* ``"tiny"``: the embedded default, built in code from the training captions: a CLIP text encoder (small
  ``CLIPTextConfig``) with a byte-level BPE tokenizer trained on the captions and saved in CLIP's format, a small
  ``UNet2DConditionModel``, a fixed, exactly invertible autoencoder stand-in (:class:`PixelShuffleAutoencoder`:
  32×32×3 pixels ⇄ 16×16×12 latents) and a DDIM scheduler (training builds its DDPM twin from the same config).

The tiny pipeline is saved with ``save_pretrained`` and loads back with ``DiffusionPipeline.from_pretrained`` once
this module has been imported (diffusers resolves the autoencoder's class, recorded in ``model_index.json`` as
``copying_study.diffusion.models``, from ``sys.modules``; :func:`load_pipeline` does that import for its callers).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from copying_study.utils.seeding import derive_seed

logger = logging.getLogger(__name__)

TINY = "tiny"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Sizes of the embedded model; every key can be overridden through ``build_tiny_pipeline(**sizes)``.
TINY_SIZES: dict[str, Any] = {
    "latent_factor": 2,  # pixel-unshuffle factor of the autoencoder stand-in (1 = pixel space)
    "unet_channels": (64, 128, 128),
    "unet_layers_per_block": 1,
    "unet_attention_levels": (False, True, True),  # which resolution levels have cross-attention
    "unet_head_dim": 32,
    "text_hidden_size": 128,
    "text_layers": 2,
    "text_heads": 4,
    "text_max_length": 40,
    "tokenizer_vocab_size": 2048,
    "prediction_type": "v_prediction",  # Stable Diffusion 2.1's; or "epsilon"
    "beta_schedule": "squaredcos_cap_v2",
}


class PixelShuffleAutoencoder(ModelMixin, ConfigMixin):
    """A fixed, exactly invertible autoencoder stand-in: ``pixel_unshuffle`` (encode) / ``pixel_shuffle`` (decode).

    It has the interface the Stable Diffusion pipeline and training code use of ``AutoencoderKL``: ``encode`` returns
    ``latent_dist`` (a zero-variance :class:`DiagonalGaussianDistribution`), ``decode`` returns ``sample``, and the
    config carries ``scaling_factor``, ``latent_channels`` and ``block_out_channels`` (whose length sets the
    pipeline's ``vae_scale_factor`` = ``2 ** (len - 1)`` = ``downscale_factor``). It has no weights to train.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        downscale_factor: int = 2,
        scaling_factor: float = 1.0,
        latent_channels: int | None = None,
        block_out_channels: Sequence[int] | None = None,
        force_upcast: bool = False,
    ):
        super().__init__()
        if downscale_factor < 1 or downscale_factor & (downscale_factor - 1):
            raise ValueError(f"downscale_factor must be a power of two >= 1, got {downscale_factor}")
        # Derived entries, kept in the config because the pipeline reads them (as it does for AutoencoderKL).
        derived = {
            "latent_channels": in_channels * downscale_factor**2,
            "block_out_channels": [in_channels] * downscale_factor.bit_length(),  # len - 1 = log2(factor)
        }
        for key, value in derived.items():
            given = locals()[key]
            if given is not None and list(given if isinstance(given, Sequence) else [given]) != list(
                value if isinstance(value, list) else [value]
            ):
                raise ValueError(f"{key}={given} contradicts in_channels/downscale_factor (expected {value})")
        self.register_to_config(**derived)
        # A weightless module still needs a floating tensor: ``.dtype``/``.device``/``.to()`` read it, and
        # ``save_pretrained`` must write a weights file for ``from_pretrained`` to find.
        self.register_buffer("probe", torch.zeros(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Pixels in [-1, 1], ``[B, C, H, W]`` → a zero-variance Gaussian over ``[B, C·f², H/f, W/f]`` latents."""
        f = self.config.downscale_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the latent factor {f}")
        mean = torch.nn.functional.pixel_unshuffle(x, f) if f > 1 else x
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> DecoderOutput | tuple:
        """Latents → pixels in [-1, 1] (clamped), the exact inverse of :meth:`encode` on valid images."""
        f = self.config.downscale_factor
        x = torch.nn.functional.pixel_shuffle(z, f) if f > 1 else z
        x = x.clamp(-1.0, 1.0)
        return DecoderOutput(sample=x) if return_dict else (x,)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer


def _bpe_merges(words: Counter, max_merges: int) -> list[tuple[str, str]]:
    """Byte-pair merges learned on a word-frequency table (words as symbol tuples), most frequent pair first and
    ties broken by the pair itself, so the same captions always give the same merges (the ``tokenizers`` trainer
    breaks ties by hash order, which changes from process to process)."""
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int = 2048, max_length: int = 32) -> CLIPTokenizer:
    """A CLIP-format tokenizer whose byte-level BPE is trained (deterministically) on ``captions``.

    It uses CLIP's normaliser and pre-tokeniser (lower case, words/digits/punctuation, byte-level), CLIP's ``</w>``
    end-of-word suffix and CLIP's vocabulary layout (every byte symbol alone and word-final, then the merges, then
    ``<|startoftext|>``/``<|endoftext|>``), so no text is unknown and it saves and loads as a ``CLIPTokenizer``.
    Merges are learned until every caption word is one token or the vocabulary holds ``vocab_size`` entries.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    texts = sorted({str(c) for c in captions if c is not None and str(c).strip()})
    if not texts:
        raise ValueError("cannot train a tokenizer: no non-empty captions were given")
    # CLIP's own normaliser and pre-tokeniser (from an empty CLIPTokenizer), so that training and use agree.
    template = CLIPTokenizer().backend_tokenizer
    words: Counter = Counter()
    for text in texts:
        for piece, _ in template.pre_tokenizer.pre_tokenize_str(template.normalizer.normalize_str(text)):
            words[(*piece[:-1], piece[-1] + "</w>")] += 1
    alphabet = sorted(ByteLevel.alphabet())
    base = alphabet + [a + "</w>" for a in alphabet]
    if vocab_size < len(base) + 2:
        raise ValueError(f"tokenizer vocab_size must be >= {len(base) + 2} (byte symbols alone and word-final, "
                         f"plus 2 special tokens), got {vocab_size}")
    merges = _bpe_merges(words, vocab_size - len(base) - 2)
    vocab = {token: i for i, token in enumerate(base)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


# ---------------------------------------------------------------------------------------------------------------
# building and loading


def _sizes(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(TINY_SIZES))
    if unknown:
        raise ValueError(f"unknown tiny-model size key(s) {unknown}: allowed keys are {sorted(TINY_SIZES)}")
    sizes = {**TINY_SIZES, **overrides}
    if sizes["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {sizes['prediction_type']!r}")
    if len(sizes["unet_attention_levels"]) != len(sizes["unet_channels"]):
        raise ValueError("unet_attention_levels needs one entry per unet_channels level")
    return sizes


def build_tiny_pipeline(captions: Sequence[str], resolution: int = 32, seed: int = 0, vae: Any = None,
                        **sizes: Any):
    """The embedded default model, freshly initialised (deterministically from ``seed``), as a
    ``StableDiffusionPipeline`` on the CPU in float32.

    ``captions`` train the tokenizer (pass every caption the model may see: all alternatives). ``sizes`` override
    :data:`TINY_SIZES`. ``vae``: a trained autoencoder to use instead of the fixed :class:`PixelShuffleAutoencoder`
    (e.g. the ``AutoencoderKL`` of :mod:`copying_study.diffusion.autoencoder`); its downsampling factor replaces
    ``latent_factor``.
    """
    s = _sizes(sizes)
    f = int(s["latent_factor"]) if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % (f * 2 ** (len(s["unet_channels"]) - 1)):
        raise ValueError(
            f"resolution {resolution} must be divisible by latent_factor × 2^(levels-1) = "
            f"{f * 2 ** (len(s['unet_channels']) - 1)}"
        )
    tokenizer = train_caption_tokenizer(captions, s["tokenizer_vocab_size"], s["text_max_length"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "tiny_model", "init") % (2**63))
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=s["text_hidden_size"],
            intermediate_size=4 * s["text_hidden_size"],
            num_hidden_layers=s["text_layers"],
            num_attention_heads=s["text_heads"],
            max_position_embeddings=s["text_max_length"],
            projection_dim=s["text_hidden_size"],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
        if vae is None:
            vae = PixelShuffleAutoencoder(in_channels=3, downscale_factor=f)
        channels = tuple(int(c) for c in s["unet_channels"])
        attn = tuple(bool(a) for a in s["unet_attention_levels"])
        unet = UNet2DConditionModel(
            sample_size=resolution // f,
            in_channels=vae.config.latent_channels,
            out_channels=vae.config.latent_channels,
            block_out_channels=channels,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            layers_per_block=int(s["unet_layers_per_block"]),
            cross_attention_dim=s["text_hidden_size"],
            attention_head_dim=int(s["unet_head_dim"]),
            norm_num_groups=min(32, min(channels)),
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=s["beta_schedule"],
        prediction_type=s["prediction_type"],
        # StableDiffusionPipeline.__init__ rewrites clip_sample=True to False (with a deprecation warning), so True
        # here never reached a sampler: say False, which is what every tiny model has been trained and sampled with
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _looks_like_hf_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def resolve_source(source: str) -> tuple[str, str]:
    """Classify a model source: ``("tiny", "tiny")``, ``("local", <abs path>)`` or ``("hf", <id>)``.

    Raises ``FileNotFoundError`` for a path that does not exist or is not a diffusers folder, and ``ValueError``
    for an empty source.
    """
    if not source or not str(source).strip():
        raise ValueError("finetune.base_model is empty: give 'tiny', a local diffusers folder or a Hugging Face id")
    source = str(source).strip()
    if source == TINY:
        return TINY, TINY
    if source == "embedded":
        raise ValueError("'embedded' names the cached embedded base model: resolve it with "
                         "copying_study.diffusion.base.ensure_base (finetune does) before loading")
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"base model folder {path} is not a diffusers pipeline (no model_index.json)")
        return "local", str(path.resolve())
    if _looks_like_hf_id(source):
        return "hf", source
    raise FileNotFoundError(
        f"base model {source!r} was not found: it is neither 'tiny', an existing diffusers folder, nor a Hugging Face "
        "id of the form 'owner/name' (see docs/real-weights.md)"
    )


def check_hf_cached(model_id: str) -> str:
    """The local snapshot folder of a Hugging Face model id, or a clear ``FileNotFoundError``.

    Nothing is downloaded: the id must already be in the local cache (``HF_HOME`` / ``HF_HUB_CACHE``)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(model_id, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"Hugging Face model {model_id!r} is not in the local cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); "
            "nothing is downloaded at run time. Download it once with `huggingface-cli download "
            f"{model_id}` on a machine with internet, or point finetune.base_model at a local folder "
            "(docs/real-weights.md)"
        ) from exc


def _loading_bars() -> None:
    """diffusers' "Loading pipeline components" and transformers' "Loading weights" bars follow the project's rule
    (``copying_study.utils.progress``): drawn on a terminal only."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    from copying_study.utils.progress import progress_enabled

    for module in (diffusers_logging, transformers_logging):
        (module.enable_progress_bar if progress_enabled() else module.disable_progress_bar)()


def load_pipeline(
    source: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    captions: Sequence[str] | None = None,
    resolution: int = 32,
    seed: int = 0,
    **sizes: Any,
):
    """A ``StableDiffusionPipeline``-like diffusers pipeline from ``source``.

    ``source`` is ``"tiny"`` (built by :func:`build_tiny_pipeline`; needs ``captions``), a local diffusers folder,
    or a Hugging Face id read from the local cache only. The safety checker is not loaded. The pipeline is moved
    to ``device`` and ``dtype`` when given.
    """
    kind, where = resolve_source(source)
    if kind == TINY:
        if not captions:
            raise ValueError("the tiny model is built from the training captions: pass captions=[...]")
        pipe = build_tiny_pipeline(captions, resolution=resolution, seed=seed, **sizes)
    else:
        folder = where if kind == "local" else check_hf_cached(where)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        index = (Path(folder) / "model_index.json").read_text()
        if "safety_checker" in index:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        _loading_bars()
        pipe = DiffusionPipeline.from_pretrained(folder, **kwargs)
        dtype = None  # already loaded in it
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# text conditioning


def tokenize(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids ``[B, L]`` of ``prompts``, padded/truncated to the tokenizer's ``model_max_length`` as SD does."""
    tok = pipe.tokenizer
    return tok(
        list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_prompts(
    pipe, prompts: Sequence[str], device: str | torch.device | None = None, text_encoder: Any = None
) -> torch.Tensor:
    """Text-encoder hidden states ``[B, L, D]`` of ``prompts``, exactly as the Stable Diffusion pipeline conditions
    the UNet (last hidden state, no attention mask unless the encoder's config asks for one). Gradients flow when
    the caller has them enabled (a trained text encoder). ``text_encoder`` replaces ``pipe.text_encoder`` (e.g. a
    data-parallel wrapper of it)."""
    encoder = text_encoder if text_encoder is not None else pipe.text_encoder
    device = torch.device(device) if device is not None else pipe.text_encoder.device
    ids = tokenize(pipe, prompts).to(device)
    mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        tok = pipe.tokenizer(
            list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        mask = tok.attention_mask.to(device)
    return encoder(ids, attention_mask=mask)[0]


def add_embedding_noise(emb: torch.Tensor, lam: float, generator: torch.Generator | None) -> torch.Tensor:
    """``emb + lam · N(0, I)`` (the paper's GN mitigation), the noise drawn from ``generator`` (on its own device,
    then moved to ``emb``'s) so that the same generator state gives the same noise on CPU and GPU."""
    if lam < 0:
        raise ValueError(f"Gaussian-noise lambda must be >= 0, got {lam}")
    if lam == 0:
        return emb
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(emb.shape, generator=generator, device=gen_device, dtype=torch.float32)
    return emb + lam * noise.to(device=emb.device, dtype=emb.dtype)


# ---------------------------------------------------------------------------------------------------------------
# provenance


def weights_checksum(*modules: torch.nn.Module) -> str:
    """sha256 over the parameters and buffers of ``modules`` (names, shapes, dtypes and bytes, in key order)."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        state = module.state_dict()
        for key in sorted(state):
            t = state[key].detach().to("cpu").contiguous()
            h.update(f"{i}:{key}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def describe_pipeline(pipe) -> dict[str, Any]:
    """The components of a pipeline (class names, parameter counts, scheduler and prediction type) for records."""

    def n_params(m) -> int:
        return int(sum(p.numel() for p in m.parameters())) if m is not None else 0

    return {
        "pipeline": type(pipe).__name__,
        "unet": type(pipe.unet).__name__,
        "unet_parameters": n_params(pipe.unet),
        "text_encoder": type(pipe.text_encoder).__name__,
        "text_encoder_parameters": n_params(pipe.text_encoder),
        "tokenizer": type(pipe.tokenizer).__name__,
        "tokenizer_vocab_size": len(pipe.tokenizer),
        "max_length": int(pipe.tokenizer.model_max_length),
        "vae": type(pipe.vae).__name__,
        "vae_scale_factor": int(pipe.vae_scale_factor),
        "scheduler": type(pipe.scheduler).__name__,
        "prediction_type": pipe.scheduler.config.get("prediction_type", "epsilon"),
        "resolution": int(pipe.unet.config.sample_size * pipe.vae_scale_factor),
    }
