"""The ``study`` pipeline: the paper's experiment grid as namespaced copies of the model stages, and its report.

``create_pipeline`` imports the stages lazily so that ``settings.py`` can import ``StudyParamsHooks`` from
``copying_study.pipelines.study.hooks`` without loading torch and diffusers.
"""

from kedro.pipeline import Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """The study grid of the project's configuration files (see ``pipeline.create_pipeline``)."""
    from copying_study.pipelines.study.pipeline import create_pipeline as create

    return create(**kwargs)


__all__ = ["create_pipeline"]
