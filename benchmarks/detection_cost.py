"""What Wen et al.'s detection scores cost per prompt, against generating that prompt's images.

The per-generation scores (``detect_first``, ``detect_mean``) are by-products of classifier-free guidance: the
sampler already computes the conditional and unconditional noise predictions at every step, and the score is one
norm of their difference per step. The prompt-level score (the copy guard's ``trigger: detection``) is one extra
batched UNet call per prompt before sampling. This script times, on the same model, sampler, batch and seeds:

* ``prompt-level score``: ``Sampler.first_step_scores`` over one request per prompt;
* ``generation``: ``Sampler.sample_batch`` of ``--images-per-prompt`` images per prompt (the scores included);
* the prompt-level score's cost as a share of the generation of one prompt's images.

Model: ``--model`` (a diffusers folder, e.g. a finetuned model of a run or an SD folder), else the embedded base model
when it is cached (``copying-study build-base``), else the in-code tiny model. Each row is the median of
``--repeats`` timings after one warm-up. Run on quiet cores:
    OMP_NUM_THREADS=2 python benchmarks/detection_cost.py --prompts 32 --images-per-prompt 4 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from copying_study.diffusion.models import build_tiny_pipeline, load_pipeline
from copying_study.diffusion.sample import ImageRequest, Sampler, image_seeds
from copying_study.utils.device import describe_device, pick_device

CAPTIONS = [f"a {c} {s} on a {b} background" for c in ("red", "green", "blue", "yellow", "purple")
            for s in ("circle", "square", "triangle", "star") for b in ("white", "dark", "striped")]


def build(model: str | None, resolution: int):
    """The model to time and its name."""
    if model:
        return load_pipeline(model), model
    cached = sorted(Path("data/06_models/embedded_base").glob("*/model"))
    if cached:
        return load_pipeline(str(cached[0])), f"embedded base {cached[0].parent.name}"
    return build_tiny_pipeline(CAPTIONS, resolution=resolution, seed=0), "in-code tiny model"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = pick_device(args.device)
    pipe, name = build(args.model, args.resolution or 32)
    pipe.set_progress_bar_config(disable=True)
    sampler = Sampler(pipe, device=device, steps=args.steps, guidance=args.guidance, batch_size=args.batch_size,
                      resolution=args.resolution)
    prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.prompts)]
    heads = [ImageRequest(p, s) for p, s in zip(prompts, image_seeds(0, len(prompts)), strict=True)]
    n_images = args.prompts * args.images_per_prompt
    images = [ImageRequest(prompts[i // args.images_per_prompt], s)
              for i, s in enumerate(image_seeds(1, n_images))]

    def generate():
        for start in range(0, len(images), args.batch_size):
            sampler.sample_batch(images[start:start + args.batch_size])

    score_s = timed(lambda: sampler.first_step_scores(heads), args.repeats)
    gen_s = timed(generate, args.repeats)
    per_prompt_score = score_s / args.prompts
    per_prompt_gen = gen_s / args.prompts
    px = f"{args.resolution} px" if args.resolution else "the model's resolution"
    print(f"model: {name}; {px}, {args.steps} steps, guidance {args.guidance}, batch {args.batch_size}; "
          f"{describe_device(device)}; torch threads {torch.get_num_threads()}; median of {args.repeats}")
    print()
    print("| what | seconds | seconds per prompt | share of a prompt's generation |")
    print("|---|---|---|---|")
    print(f"| prompt-level score ({args.prompts} prompts, one UNet call each) | {score_s:.3f} | "
          f"{per_prompt_score:.4f} | {per_prompt_score / per_prompt_gen:.1%} |")
    print(f"| generation ({args.images_per_prompt} images per prompt, detect_first and detect_mean included) | "
          f"{gen_s:.3f} | {per_prompt_gen:.4f} | 100% |")
    print("| detect_first, detect_mean | by-products of the generation row | 0 extra | 0 |")


if __name__ == "__main__":
    main()
