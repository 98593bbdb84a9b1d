"""The evaluate pipelines.

``evaluate`` scores the ``generations`` table (or, when ``evaluate.generations_path`` is set, that folder instead)
and reads ``training_record`` for the duplicated/not split. ``evaluate_folder`` (registered from
``copying_study.pipelines.evaluate_folder``) scores the folder at ``evaluate.generations_path`` and needs neither
``generations`` nor ``training_record``, for auditors who only ran ``ingest`` and ``dedup_clusters``: Kedro loads
every input of a pipeline before its first node, so inputs that may not exist must not be inputs at all. Both share
every node after the choice of input (:func:`scoring_pipeline`).
"""

from kedro.pipeline import Node, Pipeline

from copying_study.pipelines.evaluate import nodes
from copying_study.pipelines.tracking import log_metrics_node


def scoring_pipeline() -> Pipeline:
    """Everything after the input: copy scale, descriptors, matches, background, controls, per-prompt scores, FID,
    CLIPScore, summary and figures. Inputs: ``evaluate_generations``, ``evaluate_finetune_info``, ``training_set``,
    ``control_set``, ``train_descriptors``, ``descriptor_calibration``, ``duplicate_clusters``."""
    return Pipeline(
        [
            Node(nodes.copy_scale, ["descriptor_calibration", "train_descriptors", "params:evaluate"],
                 "evaluate_copy_scale", name="evaluate_copy_scale"),
            Node(nodes.describe_generations,
                 ["evaluate_generations", "train_descriptors", "params:evaluate", "params:device"],
                 "generation_descriptors", name="describe_generations"),
            Node(nodes.match_generations,
                 ["evaluate_generations", "generation_descriptors", "train_descriptors", "evaluate_finetune_info",
                  "evaluate_copy_scale", "params:evaluate"],
                 "replication_scores", name="match_generations"),
            Node(nodes.background_similarity, ["train_descriptors", "training_set", "duplicate_clusters"],
                 "replication_background", name="background_similarity"),
            Node(nodes.score_controls,
                 ["control_set", "training_set", "train_descriptors", "duplicate_clusters", "evaluate_copy_scale",
                  "params:evaluate", "params:seed", "params:device"],
                 "replication_controls", name="score_controls"),
            Node(nodes.prompt_scores, ["replication_scores", "params:evaluate"], "replication_per_prompt",
                 name="prompt_scores"),
            Node(nodes.compute_fid,
                 ["evaluate_generations", "training_set", "generation_descriptors", "train_descriptors",
                  "params:evaluate", "params:seed", "params:device"],
                 "evaluate_fid", name="compute_fid"),
            Node(nodes.compute_clipscore, ["evaluate_generations", "params:evaluate", "params:device"],
                 "evaluate_clipscore", name="compute_clipscore"),
            Node(nodes.pdq_cross_check, ["replication_scores", "evaluate_generations", "training_set",
                                         "params:evaluate"], "evaluate_pdq", name="pdq_cross_check"),
            Node(nodes.summarise,
                 ["replication_scores", "replication_background", "replication_per_prompt", "replication_controls",
                  "evaluate_copy_scale", "evaluate_fid", "evaluate_clipscore", "evaluate_finetune_info",
                  "training_set", "train_descriptors", "params:evaluate", "params:seed", "evaluate_pdq"],
                 ["replication_summary", "evaluate_metrics"], name="summarise_replication"),
            Node(nodes.plot_histogram,
                 ["replication_scores", "replication_background", "replication_controls", "evaluate_copy_scale",
                  "params:evaluate"],
                 "replication_histogram", name="plot_replication_histogram"),
            Node(nodes.plot_gallery,
                 ["replication_scores", "evaluate_generations", "training_set", "params:evaluate"],
                 "replication_gallery", name="plot_replication_gallery"),
            log_metrics_node("evaluate_metrics"),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    """``evaluate``: the generations table (or the folder when ``evaluate.generations_path`` is set) + the
    finetuning record -> replication_scores, replication_summary, evaluate_metrics and figures."""
    return Pipeline(
        [
            Node(nodes.select_generations, ["generations", "params:evaluate"], "evaluate_generations",
                 name="select_generations"),
            Node(nodes.finetune_info, ["training_record", "params:evaluate"], "evaluate_finetune_info",
                 name="read_finetune_record"),
        ]
    ) + scoring_pipeline()


def create_folder_pipeline() -> Pipeline:
    """``evaluate_folder``: the folder at ``evaluate.generations_path`` only (no generations table, no finetuning
    record: the duplicated/not split is skipped with its reason)."""
    return Pipeline(
        [
            Node(nodes.load_generations_folder, "params:evaluate", "evaluate_generations",
                 name="load_generations_folder"),
            Node(nodes.no_finetune_info, "params:evaluate", "evaluate_finetune_info", name="no_finetune_record"),
        ]
    ) + scoring_pipeline()
