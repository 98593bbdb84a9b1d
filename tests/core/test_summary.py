from copying_study.summary import format_summary


def test_summary_has_headline_numbers_split_correlations_and_plots():
    rep = {"dataset_similarity": 0.8199, "dataset_similarity_ci": [0.79, 0.8306], "n_generations": 160,
           "descriptor": {"name": "sscd"}, "fraction_above_0_5": 0.125,
           "background": {"dataset_similarity": 0.61, "median": 0.3},
           "splits": {"source_duplicated": {"duplicated": {"mean": 0.9, "n": 6},
                                            "not_duplicated": {"mean": 0.4, "n": 154}}},
           "fid": None, "frechet_distance": 0.4357, "frechet_features": "copy descriptor (not FID)"}
    cplx = {"entropy": {"status": "ok", "pearson_r": -0.42, "pearson_ci": [-0.53, -0.3], "pearson_p": 3e-8,
                        "spearman_r": -0.41},
            "jpeg_bytes": {"status": "not_computable", "reason": "constant column"}}
    text = format_summary(rep, cplx, ["data/08_reporting/replication_histogram.png"])
    assert "dataset similarity (95th pct of top-1, sscd descriptor): 0.820 [95% CI 0.790, 0.831] over 160" in text
    assert "top-1 > 0.5: 0.125" in text and "dataset similarity 0.610" in text
    assert "mean top-1 0.900 (n=6) vs not duplicated 0.400 (n=154)" in text
    assert "Frechet distance (copy descriptor (not FID)): 0.4357" in text and "FID:" not in text
    assert "entropy: Pearson r -0.420 [-0.530, -0.300] p=3e-08" in text
    assert "jpeg_bytes: not computable (constant column)" in text
    assert "replication_histogram.png" in text


def test_summary_with_fid():
    assert "FID: 12.35" in format_summary({"fid": 12.345}, None, [])
