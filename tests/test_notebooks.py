"""The notebooks in ``notebooks/``: stored with the outputs of a real run, and each still runs top to bottom.

Every notebook is stored with the outputs of a complete CPU run at its default settings (``make notebooks``,
:mod:`experiments.notebooks`), so the grids, curves and tables can be read without running anything.
:func:`test_notebook_runs` executes every notebook again, in memory, at tiny settings
(``JAXDISTILL_NOTEBOOK_TEST=1``) with nbclient in a kernel running this interpreter, so a notebook that breaks
fails CI; it never writes to the stored files.
"""
import hashlib
import pathlib
import time

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == "code"]


def _errors(nb):
  return [o for cell in _code_cells(nb) for o in cell.outputs if o.output_type == "error"]


def _has_png(nb):
  return any("image/png" in o.get("data", {}) for cell in _code_cells(nb) for o in cell.outputs)


def _notebook(tmp_path, name, *sources):
  """A notebook of code cells ``sources`` written to ``tmp_path / name``; returns its path."""
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  path = tmp_path / name
  nbformat.write(nb, str(path))
  return path


def test_notebooks_exist_and_are_stored_with_the_outputs_of_a_complete_run():
  nbformat = pytest.importorskip("nbformat")
  names = [p.name for p in NOTEBOOKS]
  for required in ("01_quickstart.ipynb", "02_methods_tour.ipynb", "03_your_own_objective.ipynb",
                   "04_generative_prior.ipynb", "05_your_own_network.ipynb"):
    assert required in names
  for path in NOTEBOOKS:
    nb = nbformat.read(str(path), as_version=4)
    code = _code_cells(nb)
    # A complete run, top to bottom in one kernel, without errors; its figures embedded (not files).
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), path.name
    assert not _errors(nb), path.name
    assert code[-1].outputs, f"{path.name} is stored without the outputs of its run"
    assert _has_png(nb), f"{path.name} is stored without its figures (image/png outputs)"


def test_kernel_env_runs_the_default_settings_headless():
  from experiments import notebooks

  env = notebooks.kernel_env({"JAXDISTILL_NOTEBOOK_TEST": "1", "MPLBACKEND": "TkAgg", "HOME": "/h"})
  assert "JAXDISTILL_NOTEBOOK_TEST" not in env
  assert env["MPLBACKEND"] == notebooks.INLINE_BACKEND
  assert env["JAXDISTILL_PROGRESS"] == "0"
  assert env["HOME"] == "/h"


def test_cell_seconds_reads_and_drops_the_run_timestamps():
  nbformat = pytest.importorskip("nbformat")
  from experiments import notebooks

  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1"),
                                       nbformat.v4.new_code_cell("2")])
  nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-12-05T17:20:00.250000Z",
                                       "shell.execute_reply": "2026-12-05T17:21:02.750000Z"}
  nb.cells[1].metadata["tags"] = ["kept"]
  assert notebooks.cell_seconds(nb) == [62.5, 0.0]  # code cells only; one without timestamps counts 0
  assert dict(nb.cells[1].metadata) == {"tags": ["kept"]}


def test_execute_stores_a_successful_run_and_refuses_a_failing_one(tmp_path, monkeypatch, capsys):
  pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")
  from experiments import notebooks

  monkeypatch.setenv("JAXDISTILL_NOTEBOOK_TEST", "1")  # must not reach the kernel: defaults run
  good = _notebook(tmp_path, "good.ipynb",
                   "import os\nprint(os.environ.get('JAXDISTILL_NOTEBOOK_TEST'), os.environ['JAXDISTILL_PROGRESS'])",
                   "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]); plt.show()",
                   "6 * 7")
  bad = _notebook(tmp_path, "bad.ipynb", "x = 1", "raise RuntimeError('boom')", "print('never')")
  bad_bytes = bad.read_bytes()

  seconds = notebooks.main([str(bad), str(good), "--timeout", "120"])
  assert seconds["bad.ipynb"] is None
  assert seconds["good.ipynb"] > 0
  captured = capsys.readouterr()
  assert "bad.ipynb: FAILED" in captured.err and "boom" in captured.err
  assert "good.ipynb:" in captured.out and "slowest code cell" in captured.out and "1/2 notebooks" in captured.out

  assert bad.read_bytes() == bad_bytes  # the failing run did not touch the stored notebook
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ipynb", "good.ipynb"]  # no temporary files left
  nb = nbformat.read(str(good), as_version=4)
  code = _code_cells(nb)
  assert [cell.execution_count for cell in code] == [1, 2, 3]
  assert not [cell for cell in code if "execution" in cell.metadata]  # no run timestamps stored
  assert code[0].outputs[0].text == "None 0\n"
  assert _has_png(nb)
  assert code[2].outputs[0].data["text/plain"] == "42"
  with pytest.raises(notebooks.NotebookError, match="boom"):
    notebooks.execute(bad, timeout=120)
  assert bad.read_bytes() == bad_bytes
  with pytest.raises(ValueError, match="path"):
    notebooks.execute(tmp_path / "missing.ipynb")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, data_dir, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JAXDISTILL_NOTEBOOK_TEST", "1")
  monkeypatch.setenv("JAXDISTILL_DATA_DIR", data_dir)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JAXDISTILL_PROGRESS", "0")
  stored = hashlib.sha256(path.read_bytes()).hexdigest()
  nb = nbformat.read(str(path), as_version=4)
  start = time.perf_counter()
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent.parent)}})
  client.execute()
  seconds = time.perf_counter() - start
  assert not _errors(nb)
  assert [cell.execution_count for cell in _code_cells(nb)] == list(range(1, len(_code_cells(nb)) + 1))
  assert hashlib.sha256(path.read_bytes()).hexdigest() == stored  # executed in memory, never written back
  print(f"{path.name}: {seconds:.0f} s in test mode")


def test_library_figures_leave_pyplot_alone(tmp_path):
  """Files drawn by the library (curves, heat maps) use a figure outside pyplot: the caller's backend and open
  figures are untouched (switching the global backend to Agg stopped plt.show() drawing in notebooks)."""
  pytest.importorskip("matplotlib")
  import matplotlib
  import matplotlib.pyplot as plt

  from jaxdistill import io
  before = matplotlib.get_backend()
  plt.switch_backend("svg")  # a backend other than Agg, as a notebook's inline backend is
  opened = plt.figure()
  try:
    io.save_curve(str(tmp_path / "curve.png"), {"a": ([0, 1], [1.0, 0.5])}, "x", "y")
    assert matplotlib.get_backend() == "svg"
    assert plt.fignum_exists(opened.number)
    with open(tmp_path / "curve.png", "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  finally:
    plt.close(opened)
    plt.switch_backend(before)
