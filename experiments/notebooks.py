"""Run the notebooks top to bottom and store them with their outputs: the job of ``make notebooks``.

    python -m experiments.notebooks                                   # every notebooks/*.ipynb, in name order
    python -m experiments.notebooks notebooks/01_quickstart.ipynb     # just these
    python -m experiments.notebooks --timeout 3600 ...                # seconds one cell may take (default 1800)

Each notebook runs in one fresh kernel (this interpreter) at its **default settings** -- the real CPU-sized run,
not the tiny settings of the test suite (``JAXDISTILL_NOTEBOOK_TEST`` is removed from the kernel's environment) --
with the repository root as working directory, so a reader of the stored notebook sees the grids, curves and
tables without running anything. The kernel's environment (:func:`kernel_env`) sets ``JAXDISTILL_PROGRESS=0``
(no progress bars in the outputs) and matplotlib's inline backend: figures are rendered headless by Agg and
embedded in the notebook as PNG outputs (plain ``MPLBACKEND=Agg`` would drop them: ``plt.show()`` is a no-op
there).

A notebook is written back only when its whole run succeeded, atomically (a temporary file next to it, then
``os.replace``): a run that raises in any cell, or times out, leaves the stored file as it was. The seconds of
each notebook are printed as it finishes, then the total; the command exits 1 if any notebook failed (the others
are still run and written).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
TEST_ENV = "JAXDISTILL_NOTEBOOK_TEST"
# Headless matplotlib whose figures become PNG outputs of the cell (rendered by Agg).
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class NotebookError(RuntimeError):
  """A notebook's run raised (or timed out); the stored notebook was left unchanged."""


def kernel_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
  """The environment of the kernel that runs a notebook: ``base`` (default ``os.environ``) without
  ``JAXDISTILL_NOTEBOOK_TEST`` (so the notebook's default settings run), with ``MPLBACKEND`` set to the inline
  backend, ``JAXDISTILL_PROGRESS=0`` and ``TF_CPP_MIN_LOG_LEVEL`` defaulting to 3."""
  env = dict(os.environ if base is None else base)
  env.pop(TEST_ENV, None)
  env["MPLBACKEND"] = INLINE_BACKEND
  env["JAXDISTILL_PROGRESS"] = "0"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  return env


def cell_seconds(nb) -> List[float]:
  """Seconds each code cell of an executed notebook ran (from nbclient's recorded timestamps), in order; the
  timestamps are removed from the cells' metadata."""
  import datetime

  def parse(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))

  seconds = []
  for cell in nb.cells:
    if cell.cell_type != "code":
      continue
    stamps = cell.metadata.pop("execution", {})
    begin, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
    if begin and end:
      seconds.append((parse(end) - parse(begin)).total_seconds())
    else:
      seconds.append(0.0)
  return seconds


def execute(path, *, timeout: int = 1800, cwd=REPO, env: Optional[Mapping[str, str]] = None) -> float:
  """Runs the notebook at ``path`` top to bottom in one fresh kernel and writes it back with its outputs.

  Args:
    path: an ``.ipynb`` file.
    timeout: seconds one cell may run before the run counts as failed.
    cwd: the kernel's working directory (default: the repository root, so ``experiments`` imports).
    env: the kernel's environment (default: :func:`kernel_env`).

  Returns:
    The seconds the run took (kernel start to the last cell's end).

  Raises:
    NotebookError: a cell raised or timed out; ``path`` is left as it was.
    ValueError: ``path`` is not an existing ``.ipynb`` file.
  """
  import nbclient
  import nbformat

  path = pathlib.Path(path)
  if path.suffix != ".ipynb" or not path.is_file():
    raise ValueError(f"path must be an existing .ipynb file, got {str(path)!r}")
  nb = nbformat.read(str(path), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                                   resources={"metadata": {"path": str(cwd)}})
  start = time.perf_counter()
  try:
    client.execute(env=dict(kernel_env() if env is None else env))
  except (nbclient.exceptions.CellExecutionError, nbclient.exceptions.CellTimeoutError,
          nbclient.exceptions.DeadKernelError) as exc:
    raise NotebookError(f"{path.name} failed after {time.perf_counter() - start:.0f} s; the stored notebook "
                        f"is unchanged:\n{exc}") from exc
  seconds = time.perf_counter() - start
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  if errors:  # nbclient raises on the first error unless a cell allows errors (tag raises-exception)
    raise NotebookError(f"{path.name}: {len(errors)} cell(s) raised ({errors[0].ename}); the stored notebook "
                        "is unchanged")
  cells = cell_seconds(nb)  # and drops the timestamps, which would change the file at every run
  if cells:
    slowest = max(range(len(cells)), key=cells.__getitem__)
    print(f"  {path.name}: slowest code cell #{slowest + 1} of {len(cells)}: {cells[slowest]:.0f} s", flush=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return seconds


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m experiments.notebooks",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: every notebooks/*.ipynb)")
  parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
  return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  return build_parser().parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Optional[float]]:
  """Runs and stores each notebook; returns ``{name: seconds}`` (``None`` for a notebook that failed)."""
  args = parse_args(argv)
  if args.timeout <= 0:
    raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
  paths: List[pathlib.Path] = ([pathlib.Path(p) for p in args.notebooks] if args.notebooks
                               else sorted(NOTEBOOK_DIR.glob("*.ipynb")))
  seconds: Dict[str, Optional[float]] = {}
  for path in paths:
    try:
      seconds[path.name] = execute(path, timeout=args.timeout)
      print(f"{path.name}: {seconds[path.name]:.0f} s", flush=True)
    except NotebookError as exc:
      seconds[path.name] = None
      print(f"{path.name}: FAILED\n{exc}", file=sys.stderr, flush=True)
  done = [s for s in seconds.values() if s is not None]
  print(f"{len(done)}/{len(seconds)} notebooks stored with outputs in {sum(done):.0f} s", flush=True)
  return seconds


if __name__ == "__main__":
  sys.exit(0 if all(s is not None for s in main().values()) else 1)
