"""Every notebook in ``notebooks/`` runs top to bottom (tiny settings: ``JAXDISTILL_NOTEBOOK_TEST=1``).

Notebooks are stored without outputs, except those in ``STORED_WITH_OUTPUTS``, which keep the outputs of a real
CPU run at their default settings (so the numbers can be read without running them); this test executes every
notebook with nbclient in a kernel running this interpreter, so a notebook that breaks fails CI.
"""
import pathlib
import time

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
STORED_WITH_OUTPUTS = ("05_your_own_network.ipynb",)


def test_notebooks_exist_and_are_stored_without_outputs():
  nbformat = pytest.importorskip("nbformat")
  names = [p.name for p in NOTEBOOKS]
  for required in ("01_quickstart.ipynb", "02_methods_tour.ipynb", "03_your_own_objective.ipynb",
                   "04_generative_prior.ipynb", "05_your_own_network.ipynb"):
    assert required in names
  for path in NOTEBOOKS:
    nb = nbformat.read(str(path), as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if path.name in STORED_WITH_OUTPUTS:
      # A complete run, top to bottom in one kernel, without errors.
      assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), path.name
      assert not [o for cell in code for o in cell.outputs if o.output_type == "error"], path.name
      assert code[-1].outputs, f"{path.name} is stored without the outputs of its run"
      continue
    for cell in code:
      assert not cell.outputs and cell.execution_count is None, f"{path.name} is stored with outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, data_dir, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JAXDISTILL_NOTEBOOK_TEST", "1")
  monkeypatch.setenv("JAXDISTILL_DATA_DIR", data_dir)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JAXDISTILL_PROGRESS", "0")
  nb = nbformat.read(str(path), as_version=4)
  start = time.perf_counter()
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent.parent)}})
  client.execute()
  seconds = time.perf_counter() - start
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors
  print(f"{path.name}: {seconds:.0f} s in test mode")
