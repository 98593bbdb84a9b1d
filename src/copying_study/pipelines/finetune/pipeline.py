"""finetune: train the base model (tiny by default, SD 2.1 in ``conf/paper``) on ``finetune_set``."""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.finetune.nodes import finetune_model, plot_sample_grids
from copying_study.pipelines.tracking import log_metrics_node


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                finetune_model,
                inputs=["finetune_set", "params:finetune", "params:seed", "params:device", "kedro_run_id"],
                outputs=["finetuned_model", "training_record", "finetune_metrics", "finetune_grids"],
                name="finetune_model",
                tags=["gpu"],  # DaskRunner asks for a worker with a GPU (docs/scale-out.md)
            ),
            Node(
                plot_sample_grids,
                inputs="finetune_grids",
                outputs="finetune_sample_grids",
                name="plot_finetune_sample_grids",
            ),
            log_metrics_node("finetune_metrics"),
        ]
    )
