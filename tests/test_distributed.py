"""Several processes for real: two ``--distributed`` processes on this machine (one CPU device each,
``jax.distributed`` with the coordinator on 127.0.0.1, gloo CPU collectives) run a short DM distillation and an
evaluation. Their result equals the one-process run, only process 0 writes files, and killing either process
makes the other exit at once instead of hanging: killing process 1 makes process 0's next collective fail, which
the CLI reports on one line (exit 1); killing process 0 takes JAX's coordination service with it, and JAX's client
in process 1 aborts that process immediately with its own message ("... another task died"), which no Python
code can intercept (its error callback cannot be replaced from Python in this JAX).
"""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import cli
from jaxdistill import io

REPO = pathlib.Path(__file__).resolve().parents[1]
# Two evaluation networks: one per process.
EVAL = ["--eval-models", "2", "--eval-epochs", "1", "--eval-width", "8", "--test-size", "100", "--no-eval-dsa",
        "--quiet"]
TINY = ["--ipc", "1", "--real-per-class", "4", "--width", "8", *EVAL]
HANG_SECONDS = 150  # far below JAX's heartbeat timeout (10 x 10 s) plus its shutdown barrier


def _env():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cli.DEBUG_ENV)}
  # vmap: the one-process runs train their evaluation networks as one program, like the split (mesh) runs.
  env.update(JAX_PLATFORMS="cpu", JAXDISTILL_PROGRESS="0", JAXDISTILL_EVAL_STRATEGY="vmap",
             PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(module: str, args, outs):
  """Starts process 0 and 1 of a two-process job, process ``i`` writing to ``outs[i]``."""
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, "-m", module, *map(str, args), "--distributed", "--coordinator-address",
       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), "--devices", "all", "--out",
       str(outs[i])], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def _finish(procs, timeout=900):
  """``[(returncode, stdout, stderr)]`` of both processes (both killed if one outlives ``timeout``)."""
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      results.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return results


def _one(module: str, args, out):
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args), "--out", str(out)], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_distill_and_evaluate_like_one(tmp_path):
  args = ["--method", "dm", "--iterations", "4", "--checkpoint-every", "2", *TINY]
  _one("experiments.distill", args, tmp_path / "one")
  outs = [tmp_path / "p0", tmp_path / "p1"]
  for code, _, err in _finish(_start("experiments.distill", args, outs)):
    assert code == 0, err[-3000:]
  assert not outs[1].exists()  # only process 0 writes
  for name in ("synthetic.npz", "metrics.json", "checkpoint.npz", "grid.png", "loss.png"):
    assert (outs[0] / name).exists(), name
  one, two = (io.load_synthetic(str(p / "synthetic.npz")) for p in (tmp_path / "one", outs[0]))
  assert np.max(np.abs(two["images"] - one["images"])) < 1e-4  # the real batch is split: reductions reorder
  m_one, m_two = (io.load_json(str(p / "metrics.json")) for p in (tmp_path / "one", outs[0]))
  assert m_two["loss_curve"] == pytest.approx(m_one["loss_curve"], rel=1e-4, abs=1e-6)
  assert m_two["device"].startswith("cpu x2") and m_one["device"].startswith("cpu x1")
  # Evaluation of one saved set: the two networks are split across the processes; same accuracies as one process.
  eval_args = ["--synthetic", tmp_path / "one" / "synthetic.npz", *EVAL]
  _one("experiments.evaluate", eval_args, tmp_path / "eval_one")
  evals = [tmp_path / "e0", tmp_path / "e1"]
  for code, _, err in _finish(_start("experiments.evaluate", eval_args, evals)):
    assert code == 0, err[-3000:]
  assert not evals[1].exists()
  r_one, r_two = (io.load_json(str(p / "results.json")) for p in (tmp_path / "eval_one", evals[0]))
  assert r_two["results"]["convnet"]["accuracies"] == pytest.approx(r_one["results"]["convnet"]["accuracies"],
                                                                    abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["kill-process-1", "kill-coordinator"])
def test_killing_one_process_stops_the_other_with_a_clear_error(tmp_path, victim):
  args = ["--method", "dm", "--iterations", "1000000", "--checkpoint-every", "20", *TINY]
  outs = [tmp_path / "p0", tmp_path / "p1"]
  procs = _start("experiments.distill", args, outs)
  try:
    end = time.monotonic() + 600
    while not (outs[0] / "checkpoint.npz").exists():  # both are in the loop (every step is a collective)
      assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
      assert time.monotonic() < end, "the job did not reach its first checkpoint"
      time.sleep(0.5)
    procs[victim].kill()
    survivor = procs[1 - victim]
    start = time.monotonic()
    try:
      _, err = survivor.communicate(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process {1 - victim} still runs {HANG_SECONDS} s after process {victim} was killed")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert time.monotonic() - start < HANG_SECONDS
  if victim == 1:  # process 0's collective fails: our one-line error, exit 1, its output lock released
    lines = [line for line in err.splitlines() if line.strip()]
    assert survivor.returncode == 1, err[-3000:]
    assert lines[-1].startswith("error: the distributed job failed: another process stopped"), err[-3000:]
    assert "Traceback" not in err and not (outs[0] / io.LOCK_FILE).exists()
  else:  # the coordination service went with process 0: JAX's client ends process 1 at once (abort), saying so
    assert survivor.returncode != 0, err[-3000:]
    assert ("another process stopped" in err or "another task died" in err), err[-3000:]
