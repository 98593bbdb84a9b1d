"""complexity_analysis: complexity of each generation's top-1 training match, correlated with its similarity."""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.complexity_analysis.nodes import (
    correlate_complexity,
    plot_complexity_density,
    plot_complexity_scatter,
    score_complexity,
)
from copying_study.pipelines.tracking import log_metrics_node


def create_pipeline(**kwargs) -> Pipeline:
    """replication_scores + training_set -> complexity_scores -> correlations, metrics and two figures."""
    return Pipeline(
        [
            Node(
                score_complexity,
                inputs=["replication_scores", "training_set", "params:complexity"],
                outputs="complexity_scores",
                name="score_complexity",
            ),
            Node(
                correlate_complexity,
                inputs=["complexity_scores", "descriptor_calibration", "params:complexity", "params:seed"],
                outputs=["complexity_correlations", "complexity_metrics"],
                name="correlate_complexity",
            ),
            Node(
                plot_complexity_density,
                inputs=["complexity_scores", "complexity_correlations"],
                outputs="complexity_density_plot",
                name="plot_complexity_density",
            ),
            Node(
                plot_complexity_scatter,
                inputs=["complexity_scores", "complexity_correlations"],
                outputs="complexity_scatter_plot",
                name="plot_complexity_scatter",
            ),
            log_metrics_node("complexity_metrics"),
        ]
    )
