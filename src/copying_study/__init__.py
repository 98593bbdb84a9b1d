"""copying_study: measure and reduce training-data copying in text-to-image diffusion models.

The heavy logic lives in framework-free sub-packages (``data``, ``descriptors``, ``search``,
``diffusion``, ``metrics``) that a notebook can import without Kedro; ``pipelines`` wires them into Kedro.
"""

__version__ = "0.1.0"
