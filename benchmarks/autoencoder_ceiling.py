"""The most a model on a given autoencoder can copy, on the run's calibrated copy scale.

A diffusion model that memorised a training image perfectly reproduces its latent; what the user sees is that latent
decoded. So the copy rate of the autoencoder's reconstructions of the training images bounds the copy rate any
model on that autoencoder can reach. This script encodes (latent mean) and decodes every image of the newest
``finetune_set`` and scores each reconstruction as evaluate scores a generation: top-1 similarity to the newest
``train_descriptors`` (the run's descriptor, whitened) against the calibrated copy threshold
(``descriptor_calibration``). Two references on the same images: the image itself, and a copy down-sampled 2x and
up-sampled again (bilinear). Run in the project after ``kedro run --pipelines=ingest,dedup_clusters``:

    python benchmarks/autoencoder_ceiling.py [--model DIR]   # default: the cached embedded base model
"""

from __future__ import annotations

import argparse
import glob
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def reconstructions(vae, images: list[Image.Image], batch: int = 64) -> list[Image.Image]:
    out = []
    for start in range(0, len(images), batch):
        x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                         for im in images[start:start + batch]])
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        out += [Image.fromarray(((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)) for t in y]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a diffusers folder (default: data/06_models/embedded_base/*/model)")
    parser.add_argument("--project", default=".")
    args = parser.parse_args()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from copying_study.descriptors import descriptor_from_meta
    from copying_study.diffusion.models import load_pipeline
    from copying_study.metrics import replication as rep

    project = Path(args.project).resolve()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="base") as session:
        catalog = session.load_context().catalog
        finetune_set = catalog.load("finetune_set")
        train = catalog.load("train_descriptors")
        threshold = float(catalog.load("descriptor_calibration")["copy_threshold"])
    model = args.model or sorted(glob.glob(str(project / "data/06_models/embedded_base/*/model")))[-1]
    vae = load_pipeline(model).vae
    descriptor = descriptor_from_meta(train["meta"])
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in finetune_set["image"]]
    ids = list(finetune_set["image_id"])
    blurred = [im.resize((im.width // 2, im.height // 2), Image.BILINEAR).resize(im.size, Image.BILINEAR)
               for im in images]
    print(f"model {model}; {len(images)} images at {images[0].size[0]} px; copy threshold {threshold:.2f} "
          f"({train['meta'].get('name')} descriptor)")
    print(f"{'images':<28} {'copy rate':>9} {'median top-1':>12} {'p10 top-1':>9} {'top-1 is itself':>15}")
    for name, group in (("originals", images), ("autoencoder reconstructions", reconstructions(vae, images)),
                        ("2x down/up-sampled", blurred)):
        scores, matches = rep.top_matches(descriptor.encode(group), np.asarray(train["embeddings"]),
                                          train["image_ids"], 1)
        top1 = scores[:, 0]
        itself = np.mean([m[0] == i for m, i in zip(matches, ids, strict=True)])
        print(f"{name:<28} {np.mean(top1 >= threshold):>9.3f} {np.median(top1):>12.3f} "
              f"{np.percentile(top1, 10):>9.3f} {itself:>15.3f}")


if __name__ == "__main__":
    main()
