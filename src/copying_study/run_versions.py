"""Dataset versions within one run: two ``kedro run``\\ s at once never read each other's data.

Kedro loads a versioned dataset at the newest version on disk *when a node loads it*. With two runs at once, run A
could read the ``finetune_set`` or ``finetuned_model`` that run B saved a moment earlier, and a dataset read by
several nodes could change between them. :func:`pin_run_versions` fixes every version before the first node:

* a dataset the run saves is loaded at the version the run saves (its run id);
* an input the run does not make, and that ``--load-versions`` does not pin, is resolved once, now, to its newest
  version, and every node reads that version. The versions are returned for the run manifest.

Only public Kedro API is used: ``catalog.get(name, version=...)`` gives a copy of a dataset at a version and
``catalog[name] = dataset`` registers it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any

from kedro.io import AbstractVersionedDataset, Version

logger = logging.getLogger(__name__)


@contextmanager
def _quiet_replacements():
    """Silence the catalog's "Replacing dataset" warnings while this module pins versions on purpose."""
    catalog_logger = logging.getLogger("kedro.io.data_catalog")
    level = catalog_logger.level
    catalog_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        catalog_logger.setLevel(level)


def pin_run_versions(catalog: Any, outputs: Iterable[str], inputs: Iterable[str],
                     requested: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Pin the load version of every versioned dataset among ``outputs`` (to the run's save version) and ``inputs``
    (to ``requested`` when ``--load-versions`` names it, else to the newest version now).

    Returns ``{input: {"version": ..., "how": "--load-versions" | "newest at run start"}}`` for the manifest."""
    requested = dict(requested or {})
    resolved: dict[str, dict[str, Any]] = {}
    with _quiet_replacements():
        for name in sorted(set(outputs)):
            dataset = catalog.get(name)
            if isinstance(dataset, AbstractVersionedDataset):
                save = dataset.resolve_save_version()
                catalog[name] = catalog.get(name, version=Version(save, save))
        for name in sorted(set(inputs)):
            dataset = catalog.get(name)
            if not isinstance(dataset, AbstractVersionedDataset):
                continue
            version = dataset.resolve_load_version()  # --load-versions, else the newest on disk now
            catalog[name] = catalog.get(name, version=Version(version, dataset.resolve_save_version()))
            resolved[name] = {"version": version,
                              "how": "--load-versions" if name in requested else "newest at run start"}
    if resolved:
        logger.info("inputs read at fixed versions for the whole run: %s",
                    ", ".join(f"{k}@{v['version']}" for k, v in resolved.items()))
    return resolved
