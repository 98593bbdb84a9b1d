"""generate: finetuned_model + training_record (+ train_descriptors for the copy guard) -> generations.

``generate_from_model`` (a separate registered pipeline) samples from ``generate.model`` instead and needs no
finetuning run. Kedro loads every input of a pipeline before its first node, so the two cannot share one pipeline.
"""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.generate.nodes import (
    generate_images,
    generate_images_from_model,
    plot_generations_grid,
)
from copying_study.pipelines.tracking import log_metrics_node

OUTPUTS = ["generations", "generate_metrics", "generate_record"]


def _grid() -> Node:
    return Node(plot_generations_grid, inputs=["generations", "params:generate"], outputs="generations_grid",
                name="plot_generations_grid")


def create_pipeline(**kwargs) -> Pipeline:
    """Sample ``generate.n_images`` images from the finetuned model (prompts, mitigation, copy guard as configured),
    then a grid figure."""
    return Pipeline(
        [
            Node(
                generate_images,
                inputs=["finetuned_model", "training_record", "train_descriptors", "descriptor_calibration",
                        "params:generate", "params:seed", "params:device"],
                outputs=OUTPUTS,
                name="generate_images",
                tags=["gpu"],  # DaskRunner asks for a worker with a GPU (docs/scale-out.md)
            ),
            _grid(),
            log_metrics_node("generate_metrics"),
        ]
    )


def create_model_pipeline() -> Pipeline:
    """The same outputs from the model at ``generate.model`` with ``file`` or ``class`` prompts."""
    return Pipeline(
        [
            Node(
                generate_images_from_model,
                inputs=["train_descriptors", "descriptor_calibration", "params:generate", "params:seed",
                        "params:device"],
                outputs=OUTPUTS,
                name="generate_images_from_model",
            ),
            _grid(),
            log_metrics_node("generate_metrics"),
        ]
    )
