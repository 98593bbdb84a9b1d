"""The study grid (:mod:`.grid`: expansion, parameters, results) and its report (:mod:`.report`)."""

from copying_study.study.grid import (
    RESULT_COLUMNS,
    STAGES,
    Cell,
    baseline_cell,
    cell_parameters,
    deep_merge,
    expand_grid,
    mitigation_table,
    namespace,
    over_seeds,
    results_row,
    results_table,
    seed_summary,
    top_copies,
)
from copying_study.study.report import SECTIONS, render_report

__all__ = ["RESULT_COLUMNS", "SECTIONS", "STAGES", "Cell", "baseline_cell", "cell_parameters", "deep_merge",
           "expand_grid", "mitigation_table", "namespace", "over_seeds", "render_report", "results_row",
           "results_table", "seed_summary", "top_copies"]
