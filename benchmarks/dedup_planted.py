"""Planted-cluster recovery of dedup_clusters on the embedded study set: pair precision / recall per seed and
threshold (connected components of the threshold graph, as the pipeline builds them).

Not a timing script: it measures what the ``dedup.threshold`` default gives on the data that ``kedro run`` makes.

    python benchmarks/dedup_planted.py                                  # 100 scenes, 32 px (the study data until 2026-12-04)
    python benchmarks/dedup_planted.py --n-images 240 --seeds 0 1 2     # another embedded set
"""

from __future__ import annotations

import argparse

import numpy as np

from copying_study.data.dedup import find_clusters, pair_scores
from copying_study.data.embedded import generate_embedded
from copying_study.descriptors import EncodedImages, load_descriptor
from copying_study.schemas import DedupParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.70, 0.75, 0.80])
    args = parser.parse_args()

    params = DedupParams.from_params({}).as_dict()
    descriptor = load_descriptor(params["descriptor"], device="cpu")
    rows = {t: [] for t in args.thresholds}
    for seed in args.seeds:
        table = generate_embedded(n_images=args.n_images, resolution=args.resolution, seed=seed)
        emb, _ = descriptor.encode_rows(EncodedImages(table["image"].tolist()), desc=None)
        ids = table["image_id"].astype(str).tolist()
        for t in args.thresholds:
            clusters = find_clusters(np.asarray(emb), ids, {**params, "threshold": t}, descriptor.meta())
            s = pair_scores(clusters["cluster_id"].to_numpy(), table["planted_cluster"].to_numpy())
            rows[t].append(f"{s['pair_precision']:.3f} / {s['pair_recall']:.3f}")
    print(f"embedded set: {args.n_images} scenes at {args.resolution} px + 8 planted clusters of 5; descriptor "
          f"{descriptor.name}; pair precision / recall")
    print("| threshold | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---" * (len(args.seeds) + 1) + "|")
    for t, cells in rows.items():
        print(f"| {t:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
