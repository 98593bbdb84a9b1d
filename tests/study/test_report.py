"""The report's views over a hand-made results table: the Fig. 6 sweep over training steps and the ddf figures of a
grid that sweeps steps."""

from __future__ import annotations

import pandas as pd

from copying_study.study import report


def results(steps: list[int]) -> pd.DataFrame:
    """One seed per cell: no duplication, full and partial duplication at ddf 10, each at every training length;
    copy rate = steps / 1000 (+0.1 full, +0.05 partial) so every cell's value is known."""
    rows = []
    for duplication, ddf, offset in (("none", 1.0, 0.0), ("full", 10.0, 0.1), ("partial", 10.0, 0.05)):
        for n in steps:
            value = n / 1000 + offset
            rows.append({"cell": f"{duplication}_s{n}", "seed": 0, "duplication": duplication, "ddf": ddf,
                         "caption_type": "original", "train_mitigation": "none", "inference_mitigation": "none",
                         "finetune_steps": n, "cell_copy_rate": value, "cell_copy_rate_ci_low": value - 0.01,
                         "cell_copy_rate_ci_high": value + 0.01})
    return pd.DataFrame(rows)


def test_steps_view_plots_each_setting_over_its_training_lengths():
    out = report._steps_section(results([100, 200, 300]))
    assert out.count("<img") == 1 and "Fig. 6" in out
    # one table row per cell, ordered by setting then steps, with each cell's value and interval
    assert out.count("<tr>") == 1 + 9
    assert "<td>full_s200</td><td>full</td><td>10</td><td>200</td><td>0.300 [0.290, 0.310]</td>" in out
    assert out.index("full_s100") < out.index("full_s300") < out.index("none_s100") < out.index("partial_s100")


def test_steps_view_says_when_the_grid_has_no_sweep():
    out = report._steps_section(results([300]))
    assert "<img" not in out and "same number of steps (300)" in out


def test_ddf_figures_use_the_main_training_length_of_a_sweep():
    sweep = pd.concat([results([100, 300]), results([300]).assign(cell=lambda d: d["cell"] + "b")])
    points = report._ddf_points(sweep)
    assert set(points) == {"full", "partial"}
    for pts in points.values():
        assert set(pts["finetune_steps"]) == {300}
    # a tie between lengths takes the longest
    tie = report._ddf_points(results([100, 300]))
    assert all(set(p["finetune_steps"]) == {300} for p in tie.values())
    assert list(tie["full"]["cell"]) == ["none_s300", "full_s300"]
