"""Grid expansion, parameter merging and validation of ``params:study`` (hand-made values)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from copying_study.pipelines.study.hooks import study_catalog_parameters
from copying_study.study import (
    Cell,
    cell_parameters,
    deep_merge,
    expand_grid,
    mitigation_table,
    over_seeds,
    results_row,
    results_table,
)
from tests.conftest import REPO


def _conf() -> dict:
    from kedro.config import OmegaConfigLoader

    return OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="base")["parameters"]


CONF = _conf()
BASE = {
    "seed": 0,
    "finetune": {**CONF["finetune"], "duplication": "full", "ddf": 10, "steps": 800, "caption_type": "original",
                 "mitigation": "none", "tiny": {"unet_channels": [64, 128], "latent_factor": 4}},
    "generate": {**CONF["generate"], "n_images": 160, "mitigation": "none",
                 "strengths": {**CONF["generate"]["strengths"], "p": 1.0, "n": 2}},
    "evaluate": {**CONF["evaluate"], "k": 10, "bootstrap": {"n_boot": 1000, "confidence": 0.95}},
    "complexity": {**CONF["complexity"], "threshold": 0.6, "n_boot": 1000},
}
STUDY = {
    "seeds": [0, 3],
    "shared": {"finetune": {"steps": 300, "tiny": {"latent_factor": 2}}, "generate": {"n_images": 40}},
    "train_cells": {
        "nodup": {"finetune": {"duplication": "none", "ddf": 1}},
        "full_ddf5": {"finetune": {"ddf": 5}, "generate": {"n_images": 20}},
    },
    "inference_cells": {"full_ddf5_rt": {"from": "full_ddf5", "generate": {"mitigation": "rt", "strengths": {"n": 4}}}},
}


def params(study=None):
    return {**BASE, "study": STUDY if study is None else study}


def test_expand_grid_gives_one_namespace_per_cell_and_seed_train_cells_first():
    cells = expand_grid(STUDY)
    assert [c.namespace for c in cells] == ["nodup__s0", "nodup__s3", "full_ddf5__s0", "full_ddf5__s3",
                                            "full_ddf5_rt__s0", "full_ddf5_rt__s3"]
    rt = cells[-1]
    assert (rt.kind, rt.source, rt.source_namespace, rt.seed) == ("inference", "full_ddf5", "full_ddf5__s3", 3)
    assert rt.overrides == {"generate": {"mitigation": "rt", "strengths": {"n": 4}}}


def test_cell_parameters_merge_base_then_shared_then_cell():
    cells = {c.namespace: c for c in expand_grid(STUDY)}
    p = cell_parameters(params(), cells["full_ddf5__s3"])
    assert p["seed"] == 3
    assert p["finetune"]["ddf"] == 5 and p["finetune"]["steps"] == 300            # cell, shared
    assert p["finetune"]["tiny"] == {"unet_channels": [64, 128], "latent_factor": 2}  # deep merge keeps siblings
    assert p["generate"]["n_images"] == 20                                          # cell beats shared
    assert p["evaluate"] == BASE["evaluate"] and p["complexity"] == BASE["complexity"]
    assert p["cell"]["namespace"] == "full_ddf5__s3" and p["cell"]["kind"] == "train"
    assert BASE["finetune"]["steps"] == 800 and BASE["finetune"]["tiny"]["latent_factor"] == 4  # inputs untouched


def test_inference_cell_inherits_its_train_cell_then_applies_its_own():
    cell = [c for c in expand_grid(STUDY) if c.namespace == "full_ddf5_rt__s0"][0]
    p = cell_parameters(params(), cell)
    assert p["finetune"]["ddf"] == 5                    # same settings as the model it samples
    assert p["generate"]["n_images"] == 20 and p["generate"]["mitigation"] == "rt"
    assert (p["generate"]["strengths"]["p"], p["generate"]["strengths"]["n"]) == (1.0, 4)
    assert p["cell"]["from_namespace"] == "full_ddf5__s0"


def test_deep_merge_replaces_lists_and_scalars():
    assert deep_merge({"a": {"b": [1, 2], "c": 1}}, {"a": {"b": [3]}}) == {"a": {"b": [3], "c": 1}}


@pytest.mark.parametrize("study, match", [
    ({**STUDY, "seed": [0]}, "study.seed: unknown parameter"),
    ({**STUDY, "seeds": []}, r"study.seeds = \[\]: expected at least 1 item"),
    ({**STUDY, "seeds": [0, 0]}, "distinct"),
    ({**STUDY, "seeds": [0, "1"]}, r"study.seeds\[1\] = '1': expected an integer"),
    ({**STUDY, "train_cells": {}}, r"study.train_cells = \{\}: expected at least 1 item"),
    ({**STUDY, "train_cells": {"full-ddf5": {}}}, "'full-ddf5' is not allowed"),
    ({**STUDY, "train_cells": {"a__s1": {}}}, "'a__s1' is not allowed"),
    ({**STUDY, "train_cells": {"x": {"finetun": {}}}}, "study.train_cells.x.finetun: unknown parameter"),
    ({**STUDY, "inference_cells": {"y": {"from": "nope"}}}, "inference_cells.y.from must name a train cell"),
    ({**STUDY, "inference_cells": {"y": {"from": "nodup", "finetune": {}}}},
     "study.inference_cells.y.finetune: unknown parameter"),
    ({**STUDY, "shared": {"generate": 3}}, "study.shared.generate = 3: expected a mapping"),
])
def test_bad_grids_are_rejected_naming_the_key(study, match):
    with pytest.raises(ValueError, match=match):
        expand_grid(study)


def test_unknown_or_mistyped_stage_parameter_of_a_cell_is_rejected_naming_its_path():
    study = {**STUDY, "train_cells": {"x": {"finetune": {"dddf": 3}}}, "inference_cells": {}}
    with pytest.raises(ValueError, match=r"study cell x__s0: finetune.dddf: unknown parameter"):
        cell_parameters(params(study), expand_grid(study)[0])
    study = {**STUDY, "train_cells": {"x": {"generate": {"copy_guard": {"enabled": "false"}}}}, "inference_cells": {}}
    with pytest.raises(ValueError, match=r"study cell x__s0: generate.copy_guard.enabled = 'false': expected true"):
        cell_parameters(params(study), expand_grid(study)[0])


def test_hook_values_cover_every_namespace_and_stage():
    values = study_catalog_parameters(params())
    assert len(values) == 6 * 6  # 6 namespaces x (4 stages + seed + cell)
    assert values["params:full_ddf5_rt__s3.generate"]["mitigation"] == "rt"
    assert values["params:nodup__s0.seed"] == 0
    assert study_catalog_parameters(BASE) == {}


def summary(similarity: float, fid=None) -> dict:
    return {"dataset_similarity": similarity, "dataset_similarity_ci": [similarity - 0.1, similarity + 0.1],
            "fraction_above_0_5": 0.25, "mean": similarity - 0.2, "n_generations": 8, "fid": fid,
            "frechet_distance": 12.5, "frechet_features": "copy descriptor 'default' (497-d) — not FID",
            "clipscore": None, "clipscore_info": {"reason": "no CLIP model"},
            "background": {"dataset_similarity": 0.7},
            "splits": {"source_duplicated": {"duplicated": {"dataset_similarity": 0.95, "mean": 0.8, "n": 3},
                                             "not_duplicated": {"dataset_similarity": 0.6, "mean": 0.5, "n": 5}}},
            "descriptor": {"name": "default"}}


def row(cell: Cell, similarity: float) -> dict:
    p = cell_parameters(params(), cell)
    record = {"duplication": p["finetune"]["duplication"], "ddf": p["finetune"]["ddf"], "caption_type": "original",
              "mitigation": "none", "steps_run": 300}
    complexity = {"entropy": {"pearson_r": -0.3, "pearson_ci": [-0.5, -0.1], "pearson_p": 0.01},
                  "jpeg_bytes": {"pearson_r": -0.2}}
    return results_row(p["cell"], p["finetune"], p["generate"], summary(similarity), complexity, record)


def test_results_row_and_table_carry_every_metric_and_name_the_quality_stand_in():
    cells = expand_grid(STUDY)
    rows = [row(c, 0.5 + 0.1 * i) for i, c in enumerate(cells)]
    table = results_table(rows)
    assert len(table) == 6 and table["kind"].tolist()[:4] == ["train"] * 4
    r = table[table["namespace"] == "full_ddf5_rt__s0"].iloc[0]
    assert r["inference_mitigation"] == "rt" and r["from_cell"] == "full_ddf5" and r["ddf"] == 5
    assert r["dataset_similarity_ci_low"] == pytest.approx(r["dataset_similarity"] - 0.1)
    assert r["quality"] == 12.5 and "not FID" in r["quality_name"] and math.isnan(r["fid"])
    assert math.isnan(r["clipscore"]) and r["clipscore_reason"] == "no CLIP model"
    assert (r["duplicated_dataset_similarity"], r["not_duplicated_dataset_similarity"]) == (0.95, 0.6)
    assert (r["duplicated_mean_similarity"], r["not_duplicated_mean_similarity"], r["n_duplicated_prompts"]) == \
        (0.8, 0.5, 3)
    assert r["entropy_pearson_r"] == -0.3 and r["entropy_pearson_ci_high"] == -0.1
    with_fid = results_row(cells[0].__dict__ | {"namespace": "n", "gallery_n": 0, "from": None},
                           BASE["finetune"], BASE["generate"], summary(0.5, fid=33.0), {}, {})
    assert (with_fid["quality"], with_fid["quality_name"]) == (33.0, "FID")


def test_over_seeds_and_the_mitigation_table_compare_with_the_baseline():
    cells = expand_grid(STUDY)
    sims = {"nodup": 0.4, "full_ddf5": 0.9, "full_ddf5_rt": 0.6}
    table = results_table([row(c, sims[c.name] + 0.02 * c.seed) for c in cells])
    stats = over_seeds(table, ["cell"]).set_index("cell")
    assert stats.loc["full_ddf5", "mean"] == pytest.approx(0.93) and stats.loc["full_ddf5", "n"] == 2
    assert (stats.loc["full_ddf5", "min"], stats.loc["full_ddf5", "max"]) == pytest.approx((0.9, 0.96))
    mitigations = mitigation_table(table)
    assert mitigations["cell"].tolist() == ["full_ddf5_rt"]
    m = mitigations.iloc[0]
    assert (m["baseline"], m["mitigation"], m["stage"]) == ("full_ddf5", "rt", "inference")
    assert m["similarity"] == pytest.approx(0.63) and m["baseline_similarity"] == pytest.approx(0.93)


def test_base_and_paper_grids_expand_and_merge_with_the_project_parameters():
    from kedro.config import OmegaConfigLoader

    for env, seeds, n_min in (("base", 3, 15), ("paper", 3, 25)):
        tree = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env=env)["parameters"]
        cells = expand_grid(tree["study"])
        assert len({c.seed for c in cells}) == seeds and len({c.name for c in cells}) >= n_min
        merged = [cell_parameters(tree, c) for c in cells]
        finetune = pd.DataFrame([m["finetune"] for m in merged])
        assert {"fixed", "class", "random"} <= set(finetune["caption_type"])
        assert {"none", "full", "partial"} <= set(finetune["duplication"])
        assert "mc" in set(finetune["mitigation"])
        assert {"rt", "rna", "gn", "cwr"} <= {m["generate"]["mitigation"] for m in merged}


def test_the_mitigations_grid_expands_every_inference_mitigation_from_one_model_and_trains_wen():
    from kedro.config import OmegaConfigLoader

    from copying_study.data.captions import INFERENCE_MITIGATIONS
    from copying_study.schemas import GenerateParams

    tree = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="mitigations")["parameters"]
    cells = expand_grid(tree["study"])
    assert {c.seed for c in cells} == {0, 1}
    merged = {c.name: cell_parameters(tree, c) for c in cells}
    assert {m["generate"]["mitigation"] for m in merged.values()} == set(INFERENCE_MITIGATIONS)
    for m in merged.values():
        GenerateParams.from_params(m["generate"])  # each cell's generate block is valid
    assert {m["finetune"]["ddf"] for m in merged.values()} == {10}
    from copying_study.schemas import FinetuneParams

    wen = [m["finetune"] for m in merged.values() if m["finetune"]["mitigation"] == "wen"]
    assert wen and all(f["wen_quantile"] == 0.95 and f["wen_threshold"] is None for f in wen)
    for f in wen:
        FinetuneParams.from_params(f)  # the training-time wen cell validates (one threshold rule, steps to mitigate)
    assert {merged[c.name]["finetune"]["mitigation"] for c in cells if c.kind == "train"} == {"none", "wen"}
    quantiles = {m["generate"]["strengths"]["wen_target_quantile"] for m in merged.values()
                 if m["generate"]["mitigation"] == "wen"}
    assert quantiles == {None, 0.5}  # Wen's fixed target, and the run's median


def test_the_fig6_grid_sweeps_steps_for_no_full_and_partial_duplication_and_compares_existing_cells():
    from kedro.config import OmegaConfigLoader

    from copying_study.schemas import FinetuneParams, StudyParams

    tree = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="fig6")["parameters"]
    grid = StudyParams.model_validate(tree["study"])
    cells = expand_grid(tree["study"])
    assert {c.seed for c in cells} == {0, 1, 2} and all(c.kind == "train" for c in cells)
    merged = {c.name: cell_parameters(tree, c)["finetune"] for c in cells}
    for f in merged.values():
        FinetuneParams.from_params(f)
    settings = {(f["duplication"], f["ddf"], f["steps"]) for f in merged.values()}
    assert settings == {(d, ddf, s) for d, ddf in (("none", 1), ("full", 10), ("partial", 10))
                        for s in (100, 200, 300)}
    names = {c.name for c in cells}
    assert all(comp.a in names and comp.b in names for comp in grid.comparisons)
    # the comparisons against the no-duplication cells never ask for the duplicated prompts' copy rate
    assert not any("copy_rate_duplicated" in comp.statistics for comp in grid.comparisons if "nodup" in comp.b)
