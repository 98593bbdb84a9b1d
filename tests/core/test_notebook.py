"""notebooks/explore_a_run.ipynb runs on a small default run: it loads the outputs through the catalog
(``%load_ext kedro.ipython``), draws the strongest copies and the similarity distributions, and compares two MLflow
runs. Executed here (nbclient) so that it never rots."""

import re
import shutil

import pytest

from tests.conftest import REPO, run_kedro
from tests.core.test_default_study_determinism import REDUCED


def _text(output) -> str:
    """An output's text without the terminal colours that Kedro's rich logging and pretty-printing add."""
    text = output.get("text") or str(output.get("data", {}).get("text/plain", ""))
    return re.sub(r"\x1b\[[0-9;]*m|\x1b\][^\x1b]*\x1b\\", "", text)


@pytest.mark.slow
def test_the_notebook_runs_on_a_default_run_and_compares_two_runs(kedro_project):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    run_kedro(kedro_project, ["__default__"], params=REDUCED)
    # a second top-level run with another parameter: the notebook's comparison must show it
    run_kedro(kedro_project, ["evaluate"], params={**REDUCED, "evaluate": {**REDUCED["evaluate"], "k": 3}})
    source = REPO / "notebooks" / "explore_a_run.ipynb"
    nb = nbformat.read(source, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
        "the notebook in git must have its outputs stripped"
    (kedro_project / "notebooks").mkdir()
    shutil.copy(source, kedro_project / "notebooks" / source.name)

    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(kedro_project / "notebooks")}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(_text(o) for o in outputs)
    assert "copy rate: " in text and "controls: " in text and "copy threshold 0.500" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the copies and the distributions
    assert re.search(r"; 1 of the \d+ parameters both logged differ", text) and "evaluate.k" in text, text[-3000:]
