"""jaxdistill without TensorFlow: data, imports and a CLI run in a subprocess where TF cannot be imported.

The subprocess gets a ``sitecustomize`` (first on ``PYTHONPATH``) that puts a ``sys.meta_path`` finder in front
of all others; it raises ``ModuleNotFoundError`` for tensorflow, tensorflow_datasets, tf2jax and neural_tangents,
as on an accelerator machine that has only jax/flax/optax/chex/numpy.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

from jaxdistill import data

REPO = pathlib.Path(__file__).resolve().parents[1]
HIDDEN = ("tensorflow", "tensorflow_datasets", "tf2jax", "neural_tangents")

SITECUSTOMIZE = f"""
import sys

HIDDEN = {HIDDEN!r}


class HideTensorFlow:
  \"\"\"Makes the HIDDEN top-level packages (and their submodules) look uninstalled.\"\"\"

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in HIDDEN:
      raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by test_data_without_tf)", name=name)
    return None


sys.meta_path.insert(0, HideTensorFlow())
"""


def _run(tmp_path, args, timeout=600):
  """Runs ``.venv``'s Python (this interpreter) with TF hidden, in the repo root; returns the process."""
  site = tmp_path / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
  env = {k: v for k, v in os.environ.items() if k != "JAXDISTILL_DATA_BACKEND"}  # auto: IDX without TF
  env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, (
      f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
  return proc


def test_hidden_modules_cannot_be_imported(tmp_path):
  code = textwrap.dedent(f"""
      for name in {HIDDEN!r} + ("tensorflow.io",):
        try:
          __import__(name)
        except ImportError:
          continue
        raise SystemExit(f"{{name}} was importable")
      """)
  _run(tmp_path, ["-c", code])


def test_data_and_imports_without_tensorflow(tmp_path, data_dir):
  x_tfds, y_tfds, _ = data.load("fashion_mnist", "train[:500]", data_dir=data_dir, backend="tfds")
  out = tmp_path / "arrays.npz"
  code = textwrap.dedent(f"""
      import sys

      import numpy as np

      from jaxdistill import data
      from jaxdistill.data import datasets

      assert datasets.resolve_backend("fashion_mnist") == "idx"
      x, y, spec = data.load("fashion_mnist", "train[:500]")
      np.savez({str(out)!r}, x=x, y=y)

      import jaxdistill, experiments.distill, experiments.evaluate, experiments.coreset  # noqa: F401
      from jaxdistill import kernels

      tfds_extra, kernels_extra = "pip install jaxdistill[tfds]", "pip install jaxdistill[kernels]"
      for call, extra in ((lambda: data.load("cifar10", "test"), tfds_extra),
                          (lambda: data.load("fashion_mnist", "test", backend="tfds"), tfds_extra),
                          (kernels.require_neural_tangents, kernels_extra)):
        try:
          call()
        except ImportError as e:
          assert extra in str(e), str(e)
        else:
          raise SystemExit(f"no ImportError naming {{extra}}")
      loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HIDDEN!r})
      assert not loaded, loaded
      """)
  _run(tmp_path, ["-c", code])
  with np.load(out) as arrays:
    assert arrays["x"].shape == (500, 28, 28, 1) and arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(arrays["x"], x_tfds)
    np.testing.assert_array_equal(arrays["y"], y_tfds)


def test_coreset_cli_without_tensorflow(tmp_path, data_dir):
  out = tmp_path / "run"
  _run(tmp_path, ["-m", "experiments.coreset", "--method", "random", "--ipc", "1", "--eval-models", "1",
                  "--eval-epochs", "1", "--eval-width", "8", "--test-size", "200", "--quiet", "--out", str(out)])
  for name in ("synthetic.npz", "metrics.json", "grid.png"):
    assert (out / name).stat().st_size > 0
