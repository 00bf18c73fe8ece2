"""Reliability of the command line (experiments/cli.py): one-line errors and exit codes, synthetic sets checked
against the dataset, locked and atomically written outputs, Ctrl-C and kill -9 with --resume, read-only and
corrupt files, the ``jaxdistill`` command, a quiet and fast start, and the memory of a DM IPC 10 run.

Most cases call a CLI through :func:`experiments.cli.run` in this process (the wrapper of ``python -m`` and of
``jaxdistill``); the ones about processes (signals, locks, start-up, logs) run real subprocesses.
"""
from __future__ import annotations

import io as stdio
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from experiments import buffers, cli, common, distill, evaluate, names
from jaxdistill import io

REPO = pathlib.Path(__file__).resolve().parents[1]
# The flags every CLI shares (a tiny evaluation), and with distill's own.
SHARED = ["--ipc", "1", "--eval-models", "1", "--eval-epochs", "1", "--eval-width", "8", "--test-size", "100",
          "--no-eval-dsa", "--quiet"]
TINY = SHARED + ["--real-per-class", "4", "--width", "8"]
NOISE = re.compile(r"cuda|cuInit|absl::InitializeLog|oneDNN|cpu_feature_guard|^[IWEF]\d{4} ", re.I | re.M)


def _env(**extra):
  """The subprocess environment: this repository importable, no progress bars, and no TF_CPP_MIN_LOG_LEVEL (the
  commands must be quiet without it)."""
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", cli.DEBUG_ENV)}
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["JAXDISTILL_PROGRESS"] = "0"
  env.update(extra)
  return env


def _cli(module, *args, timeout=600, **env):
  """``python -m MODULE ARGS`` in the repository; returns the finished process."""
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=_env(**env),
                        capture_output=True, text=True, timeout=timeout)


def _run(main, argv, capsys, monkeypatch):
  """``cli.run(main, argv)`` in this process: ``(exit code, stdout, stderr)``."""
  monkeypatch.setattr(cli, "quiet_native_logs", lambda *a, **k: None)  # leave this process's imports alone
  with pytest.raises(SystemExit) as e:
    cli.run(main, [str(a) for a in argv])
  out, err = capsys.readouterr()
  return e.value.code, out, err


def _error_line(err: str) -> str:
  """The one line a user error prints (fails unless stderr is exactly one line starting with 'error: ')."""
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  return lines[0]


def _files(path) -> list:
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


# -- usage and argument errors: one line, exit 2 (argparse) or 1, nothing written -------------------------------

USAGE_CASES = [
    ("experiments.distill", ["--method", "dm", "--ipc", "1", "--iterations", "0"], 2,
     r"--iterations: must be an integer >= 1"),
    ("experiments.distill", ["--method", "nope", "--ipc", "1"], 2, r"argument --method: invalid choice: 'nope'"),
    ("experiments.distill", ["--method", "dm", "--ipc", "1"], None, r"the following arguments are required: --out"),
    ("experiments.distill", ["--method", "dm", "--ipc", "1", "--time-budget", "-1"], 1, r"--time-budget must be > 0"),
    ("experiments.distill", ["--method", "dm", "--ipc", "1", "--config", "{tmp}/missing.json"], 1,
     r"No such file: .*missing"),
    ("experiments.distill", ["--method", "dm", "--ipc", "1", "--config", "{tmp}/bad.json"], 1,
     r"unknown option\(s\)"),
    ("experiments.distill", ["--method", "dm", "--ipc", "1", "--dataset", "imagenet"], 1, r"imagenet"),
    ("experiments.coreset", ["--method", "random", "--ipc", "x"], 2, r"--ipc: invalid positive_int value"),
    ("experiments.evaluate", ["--synthetic", "{tmp}/none.npz"], 1, r"No such file: .*none\.npz"),
    ("experiments.evaluate", ["--synthetic", "{tmp}/bad.json", "--arch", "convnet,nope"], 1,
     r"--arch entries must be in"),
    ("experiments.buffers", ["--experts", "0"], 2, r"--experts: must be an integer >= 1"),
    ("experiments.nas", ["--norms", "weird"], 1, r"--norms entries must be in"),
    ("experiments.continual", ["--methods", "dm,magic"], 1, r"--methods entries must be in"),
]


@pytest.mark.parametrize("module,args,code,pattern", USAGE_CASES,
                         ids=[f"{m.split('.')[-1]}-{i}" for i, (m, *_) in enumerate(USAGE_CASES)])
def test_bad_arguments_print_one_line_and_write_nothing(tmp_path, module, args, code, pattern):
  (tmp_path / "bad.json").write_text(json.dumps({"learning_rate_of_everything": 3}))
  out = tmp_path / "run"
  argv = [a.format(tmp=tmp_path) for a in args]
  if code is not None:
    argv += ["--out", str(out)]
  proc = _cli(module, *argv, "--quiet")
  assert proc.returncode == (code or 2), proc.stderr[-3000:]
  line = _error_line(proc.stderr)
  assert re.search(pattern, line), line
  assert "Traceback" not in proc.stderr and not out.exists()


def test_usage_errors_answer_before_jax_and_tensorflow():
  """--help and a bad flag value are answered without importing JAX, TensorFlow or the library."""
  script = textwrap.dedent("""
      import importlib, json, sys
      from experiments import cli
      seen = {}
      for name in ("distill", "coreset", "evaluate", "buffers", "continual", "nas", "main", "full"):
        module = importlib.import_module("experiments." + name)
        for argv in (["--help"], ["--no-such-flag"]):
          try:
            cli.run(module.main, argv)
          except SystemExit as e:
            seen[name + " " + argv[0]] = e.code
      heavy = sorted(m for m in ("jax", "numpy", "tensorflow", "flax", "jaxdistill") if m in sys.modules)
      print("RESULT " + json.dumps({"codes": seen, "heavy": heavy}))
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT ")[-1])
  assert result["heavy"] == [], result
  assert set(result["codes"].values()) == {0, 2} and len(result["codes"]) == 16, result


def test_light_names_match_the_library():
  """experiments/names.py copies library constants so parsers need no import; they must stay equal."""
  from jaxdistill import coreset, generators, models, objectives, presets
  from jaxdistill.apps import continual
  from jaxdistill.models import layers
  from jaxdistill.synthetic import glad

  assert names.OBJECTIVES == tuple(objectives.METHODS)
  assert set(names.OBJECTIVES) == set(objectives.REGISTRY)
  assert set(names.PARAMETERISATIONS) == set(distill.BUILDERS) - set(objectives.REGISTRY)
  assert set(names.DISTILL_METHODS) == set(objectives.METHODS) | set(distill.BUILDERS)
  assert distill.method_choices() == names.DISTILL_METHODS
  assert names.CORESET_METHODS == tuple(coreset.METHODS)
  assert (names.FEATURE_WIDTH, names.FEATURE_EPOCHS) == (coreset.FeatureNetConfig.width,
                                                         coreset.FeatureNetConfig.epochs)
  assert names.ARCHITECTURES == tuple(models.ARCHITECTURES)
  assert names.CONTINUAL_METHODS == tuple(continual.METHODS)
  assert (names.ACTIVATIONS, names.NORMS, names.POOLINGS) == (tuple(layers.ACTIVATIONS), tuple(layers.NORMS),
                                                              tuple(layers.POOLINGS))
  assert names.PRESETS == presets.names()
  assert names.GENERATOR_ARCHS == tuple(generators.ARCHS) and names.GLAD_SPACES == tuple(glad.SPACES)


# -- user errors vs internal errors, --debug ---------------------------------------------------------------------

def test_debug_flag_and_variable_show_the_traceback(tmp_path):
  args = ["--method", "dm", "--ipc", "1", "--time-budget", "-1", "--out", tmp_path / "run"]
  plain = _cli("experiments.distill", *args)
  assert plain.returncode == 1 and "Traceback" not in plain.stderr
  for proc in (_cli("experiments.distill", *args, "--debug"),
               _cli("experiments.distill", *args, **{cli.DEBUG_ENV: "1"})):
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "--time-budget must be > 0" in proc.stderr


def test_internal_errors_keep_their_traceback(tmp_path, capsys, monkeypatch):
  def broken(argv):
    np.load(stdio.BytesIO(b"junk" * 10), allow_pickle=False)  # a ValueError raised inside NumPy: a bug

  code, _, err = _run(broken, [], capsys, monkeypatch)
  assert code == 1 and "Traceback (most recent call last)" in err and "allow_pickle" in err

  def user(argv):
    io.load_json(str(tmp_path / "settings.json"))  # a ValueError raised by jaxdistill: a user error

  code, _, err = _run(user, [], capsys, monkeypatch)
  assert code == 1 and _error_line(err) == f"error: No such file: {str(tmp_path / 'settings.json')!r}."
  assert cli.one_line("--thing must be 3,\n  got 4.") == "--thing must be 3, got 4."

  def missing(argv):
    open("/nonexistent/jaxdistill/file.json")

  code, _, err = _run(missing, [], capsys, monkeypatch)
  assert code == 1 and _error_line(err) == "error: No such file or directory: '/nonexistent/jaxdistill/file.json'"


# -- synthetic sets are checked against the dataset before any work --------------------------------------------

def _bad_sets(tmp_path, good):
  """``{case: (path, expected fragment)}``: sets and files the evaluate / nas CLIs must refuse."""
  images, labels, meta = good["images"], good["labels"], good["metadata"]
  cases = {}

  def synthetic(name, fragment, **arrays):
    path = tmp_path / f"{name}.npz"
    io.save_npz(str(path), {"images": images, "labels": labels, **arrays}, meta)
    cases[name] = (path, fragment)

  synthetic("rgb_32px", "images are 32x32x3 (H x W x channels), the dataset's are 28x28x1",
            images=np.zeros((10, 32, 32, 3), np.float32))
  synthetic("labels_5_to_14", "labels range 5..14, the dataset has 10 classes", labels=np.arange(10) + 5)
  synthetic("negative_label", "labels range -1..8", labels=np.arange(10) - 1)
  synthetic("float_hard_labels", "hard labels must be integers", labels=np.arange(10).astype(np.float32))
  synthetic("soft_width", "soft labels have 7 columns, the dataset has 10 classes",
            labels=np.ones((10, 7), np.float32))
  synthetic("soft_no_class", "soft-label row 0 has no positive entry", labels=-np.ones((10, 10), np.float32))
  synthetic("soft_nan", "soft labels must be finite", labels=np.full((10, 10), np.nan, np.float32))
  synthetic("label_count", "labels must be [N] or [N, classes] for its 10 images", labels=np.arange(7))
  synthetic("uint8_images", "images are uint8, expected float32", images=np.zeros((10, 28, 28, 1), np.uint8))
  synthetic("nan_images", "images contain NaN", images=np.full((10, 28, 28, 1), np.nan, np.float32))
  synthetic("negative_lr", "learned learning rate must be finite and > 0", lr=np.float32(-0.01))
  synthetic("no_images", "it holds no images", images=np.zeros((0, 28, 28, 1), np.float32),
            labels=np.zeros((0,), np.int32))
  np.save(tmp_path / "array.npy", np.zeros(3))
  os.replace(tmp_path / "array.npy", tmp_path / "array.npz")
  cases["npy_file"] = (tmp_path / "array.npz", "is not an .npz file (it is a .npy array)")
  (tmp_path / "text.npz").write_text("not an archive")
  cases["text_file"] = (tmp_path / "text.npz", "is not an .npz file")
  (tmp_path / "pickle.npz").write_bytes(b"\x80\x04\x95" + b"\x00" * 20)
  cases["pickle_file"] = (tmp_path / "pickle.npz", "is not an .npz file")
  whole = (tmp_path / "rgb_32px.npz").read_bytes()
  (tmp_path / "truncated.npz").write_bytes(whole[:len(whole) // 2])
  cases["truncated"] = (tmp_path / "truncated.npz", "is truncated or corrupt")
  (tmp_path / "empty.npz").write_bytes(b"")
  cases["empty"] = (tmp_path / "empty.npz", "is empty")
  objects = tmp_path / "objects.npz"
  np.savez(objects, images=np.array([{"a": 1}], dtype=object), labels=np.arange(1))
  cases["pickled_arrays"] = (objects, "holds pickled (object) arrays")
  return cases


BAD_SETS = ["rgb_32px", "labels_5_to_14", "negative_label", "float_hard_labels", "soft_width", "soft_no_class",
            "soft_nan", "label_count", "uint8_images", "nan_images", "negative_lr", "no_images", "npy_file",
            "text_file", "pickle_file", "truncated", "empty", "pickled_arrays"]


@pytest.fixture(scope="module")
def good_set(tmp_path_factory):
  """A real synthetic set (a tiny DM run)."""
  out = tmp_path_factory.mktemp("good") / "run"
  distill.main(["--method", "dm", "--iterations", "1", "--out", str(out), *TINY])
  return io.load_synthetic(str(out / "synthetic.npz"))


@pytest.mark.parametrize("case", BAD_SETS)
def test_bad_synthetic_sets_are_refused_before_any_work(tmp_path, good_set, case, capsys, monkeypatch):
  path, fragment = _bad_sets(tmp_path, good_set)[case]
  monkeypatch.setattr(common, "load_dataset", lambda *a: pytest.fail("the dataset was loaded"))
  out = tmp_path / "out"
  code, _, err = _run(evaluate.main, ["--synthetic", path, "--out", out, "--quiet"], capsys, monkeypatch)
  line = _error_line(err)
  assert code == 1 and fragment in line and str(path.name) in line, line
  assert not out.exists()


def test_nas_checks_its_synthetic_set_too(tmp_path, good_set, capsys, monkeypatch):
  path, fragment = _bad_sets(tmp_path, good_set)["labels_5_to_14"]
  from experiments import nas
  monkeypatch.setattr(common, "load_dataset", lambda *a: pytest.fail("the dataset was loaded"))
  code, _, err = _run(nas.main, ["--synthetic", path, "--out", tmp_path / "out", "--quiet"], capsys, monkeypatch)
  assert code == 1 and fragment in _error_line(err) and not (tmp_path / "out").exists()


def test_a_good_set_passes_the_check(good_set):
  assert io.synthetic_problems(good_set, (28, 28, 1), 10) == []
  soft = dict(good_set, labels=np.eye(10, dtype=np.float32) * 0.9 + 0.01, lr=np.float32(0.01))
  assert io.synthetic_problems(soft, (28, 28, 1), 10) == []


# -- outputs: locks, read-only folders, corrupt checkpoints and buffers ------------------------------------------

def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path):
  out = tmp_path / "run"
  out.mkdir()
  lock = out / io.LOCK_FILE
  owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock.write_text(json.dumps({"pid": owner.pid, "host": __import__("socket").gethostname(), "start": None,
                                "command": "python -m experiments.distill ..."}))
    for overwrite in (False, True):
      with pytest.raises(ValueError, match=rf"in use by another run \(pid {owner.pid} "):
        io.prepare_out_dir(str(out), overwrite=overwrite)
  finally:
    owner.kill()
    owner.wait()
  lock.write_text(json.dumps({"pid": _dead_pid(), "host": __import__("socket").gethostname(), "start": None}))
  (out / ".synthetic.npz.abc123.tmp").write_bytes(b"half a file")  # left by a killed run
  io.prepare_out_dir(str(out))  # stale lock taken over; the folder counts as empty
  assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert _files(out) == [io.LOCK_FILE]
  io.prepare_out_dir(str(out))  # the same process again: no-op
  io.release_locks()
  assert _files(out) == []


def _make_read_only(path: pathlib.Path) -> None:
  """A folder this process cannot write into: ``chmod 555``, or for root (who ignores modes) ``chattr +i``."""
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    return
  chattr = shutil.which("chattr")
  if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
    pytest.skip("running as root without a working chattr +i: no way to make a folder read-only")


def _undo_read_only(path: pathlib.Path) -> None:
  if os.geteuid() == 0:
    subprocess.run([shutil.which("chattr") or "chattr", "-i", str(path)], capture_output=True)
  else:
    path.chmod(0o755)


@pytest.mark.parametrize("inside", [False, True], ids=["out-read-only", "parent-read-only"])
def test_read_only_out_is_refused_before_any_compute(tmp_path, inside, capsys, monkeypatch):
  ro = tmp_path / "ro"
  _make_read_only(ro)
  try:
    probe = ro / "probe"
    with pytest.raises(OSError):
      probe.write_text("x")
    out = ro / "run" if inside else ro
    monkeypatch.setattr(common, "load_dataset", lambda *a: pytest.fail("compute started"))
    code, _, err = _run(distill.main, ["--method", "dm", "--iterations", "2", "--out", out, *TINY], capsys,
                        monkeypatch)
    line = _error_line(err)
    assert code == 1 and str(out) in line
    assert ("cannot create --out" if inside else "is not writable") in line, line
  finally:
    _undo_read_only(ro)


def test_truncated_checkpoint_is_named(tmp_path, capsys, monkeypatch):
  out = tmp_path / "run"
  args = ["--method", "dm", "--iterations", "2", "--out", out, *TINY]
  distill.main([str(a) for a in args])
  ckpt = out / "checkpoint.npz"
  whole = ckpt.read_bytes()
  for broken in (whole[:len(whole) // 2], whole[:100] + b"\x00" * (len(whole) - 100)):
    ckpt.write_bytes(broken)
    code, _, err = _run(distill.main, args + ["--iterations", "3", "--resume"], capsys, monkeypatch)
    line = _error_line(err)
    assert code == 1 and str(ckpt) in line and "truncated or corrupt" in line, line


def test_truncated_or_corrupt_expert_buffer_is_named(tmp_path, capsys, monkeypatch):
  buf = tmp_path / "buffer"
  buffers.main(["--experts", "1", "--epochs", "2", "--width", "8", "--train-size", "200", "--test-size", "100",
                "--batch-size", "64", "--no-dsa", "--quiet", "--out", str(buf)])
  shard = buf / "shard_00000.npz"
  whole = shard.read_bytes()
  args = ["--method", "mtt", "--buffer", buf, "--iterations", "1", "--syn-steps", "2", "--expert-epochs", "1",
          "--max-start-epoch", "1", "--out", tmp_path / "run", *TINY]
  shard.write_bytes(whole[:len(whole) // 2])
  code, _, err = _run(distill.main, args, capsys, monkeypatch)
  line = _error_line(err)
  assert code == 1 and str(shard) in line and "truncated or corrupt" in line, line
  shard.write_bytes(whole)
  meta = buf / "buffer.json"
  meta.write_text(meta.read_text()[:50])
  code, _, err = _run(distill.main, args, capsys, monkeypatch)
  line = _error_line(err)
  assert code == 1 and str(meta) in line and "not valid JSON" in line, line


# -- processes: Ctrl-C, a concurrent run, kill -9 during a checkpoint write -----------------------------------

def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
  end = time.monotonic() + timeout
  while not path.exists():
    if proc.poll() is not None:
      raise AssertionError(f"process ended ({proc.returncode}) before {path} appeared:\n"
                           f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
    assert time.monotonic() < end, f"{path} did not appear within {timeout} s"
    time.sleep(0.2)


def test_concurrent_run_refused_then_ctrl_c_checkpoints_and_resume_reports_time(tmp_path):
  out = tmp_path / "run"
  args = ["--method", "dm", "--iterations", "100000", "--checkpoint-every", "20", "--out", out, *TINY]
  first = subprocess.Popen([sys.executable, "-m", "experiments.distill", *map(str, args)], cwd=REPO,
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(out / "checkpoint.npz", first)
    second = _cli("experiments.distill", *args, "--overwrite")
    line = _error_line(second.stderr)
    assert second.returncode == 1 and f"in use by another run (pid {first.pid} " in line, line
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 130, err[-3000:]
  line = [l for l in err.splitlines() if l.strip()][-1]
  match = re.match(r"interrupted at image update (\d+) of 100000; checkpoint written to (.+); resume with: "
                   r"python -m experiments\.distill .*--resume$", line)
  assert match and match.group(2) == str(out / "checkpoint.npz"), line
  done = int(match.group(1))
  arrays, meta = io.load_npz(str(out / "checkpoint.npz"))
  assert meta["step"] == done and len(arrays["losses"]) == done and done >= 20
  assert not (out / io.LOCK_FILE).exists()
  # Resume for one more step than the checkpoint holds: only the compiling step runs in this call, and the
  # seconds per iteration still come out as a number (the earlier chunk's timing is kept in the checkpoint).
  resumed = _cli("experiments.distill", *[a if a != "100000" else str(done + 1) for a in map(str, args)],
                 "--resume")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  metrics = io.load_json(str(out / "metrics.json"))
  assert metrics["resumed_from"] == done and len(metrics["loss_curve"]) == done + 1
  assert np.isfinite(metrics["seconds_per_iteration"]) and metrics["seconds_per_iteration"] > 0


def test_interrupt_lines_and_exit_code(capsys, monkeypatch):
  def stopped(argv):
    e = KeyboardInterrupt()
    e.kept = "the finished shards in runs/b"
    e.resume_command = cli.resume_command("experiments.buffers", ["--out", "runs/b"])
    raise e

  code, _, err = _run(stopped, [], capsys, monkeypatch)
  assert code == 130 and err.strip() == ("interrupted; kept: the finished shards in runs/b; resume with: "
                                         "python -m experiments.buffers --out runs/b --resume")
  assert cli.interrupt_message(KeyboardInterrupt()) == "interrupted"
  assert cli.resume_command("experiments.distill", ["--out", "a b", "--resume"]) == \
      "python -m experiments.distill --out 'a b' --resume"


KILL_DURING_WRITE = textwrap.dedent("""
    import io, os, sys, time
    import numpy as np
    marker, argv = sys.argv[1], sys.argv[2:]
    real, writes = np.savez, []

    def savez(f, **arrays):
      if "leaf_00000" not in arrays:  # not a checkpoint
        return real(f, **arrays)
      writes.append(1)
      if len(writes) < 3:
        return real(f, **arrays)
      buf = io.BytesIO()
      real(buf, **arrays)
      f.write(buf.getvalue()[:len(buf.getvalue()) // 2])  # half of the third checkpoint, then hang
      f.flush()
      os.fsync(f.fileno())
      open(marker, "w").close()
      time.sleep(600)

    np.savez = savez
    from experiments import cli, distill
    cli.run(distill.main, argv)
""")


def test_kill_9_during_a_checkpoint_write_then_resume_equals_an_uninterrupted_run(tmp_path):
  args = ["--method", "dm", "--iterations", "12", "--checkpoint-every", "3", *TINY]
  killed, whole = tmp_path / "killed", tmp_path / "whole"
  marker = tmp_path / "writing"
  proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_WRITE, str(marker), *args, "--out", str(killed)],
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(marker, proc)
  finally:
    proc.kill()  # SIGKILL in the middle of writing the checkpoint of iteration 9
    proc.wait()
  leftovers = [n for n in _files(killed) if n.endswith(".tmp")]
  assert leftovers and (killed / io.LOCK_FILE).exists()  # a half-written temporary file and a stale lock
  arrays, meta = io.load_npz(str(killed / "checkpoint.npz"))  # the previous checkpoint is intact
  assert meta["step"] == 6 and len(arrays["losses"]) == 6
  resumed = _cli("experiments.distill", *args, "--out", killed, "--resume")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  straight = _cli("experiments.distill", *args, "--out", whole)
  assert straight.returncode == 0, straight.stderr[-3000:]
  a, b = io.load_synthetic(str(killed / "synthetic.npz")), io.load_synthetic(str(whole / "synthetic.npz"))
  np.testing.assert_array_equal(a["images"], b["images"])
  np.testing.assert_array_equal(a["labels"], b["labels"])
  ma, mb = io.load_json(str(killed / "metrics.json")), io.load_json(str(whole / "metrics.json"))
  assert ma["resumed_from"] == 6 and ma["loss_curve"] == mb["loss_curve"]
  assert ma["test_accuracies"] == mb["test_accuracies"]
  assert not [n for n in _files(killed) if n.endswith(".tmp") or n == io.LOCK_FILE]


# -- the jaxdistill command, quiet start, memory ------------------------------------------------------------------

def test_jaxdistill_console_script(tmp_path):
  import configparser
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  assert "jaxdistill = experiments.cli:main" in cfg["options.entry_points"]["console_scripts"]
  exe = pathlib.Path(sys.executable).parent / "jaxdistill"
  assert exe.exists(), "reinstall the package (make install / pip install -e .) to get the jaxdistill command"
  top = subprocess.run([str(exe), "--help"], env=_env(), capture_output=True, text=True, timeout=120)
  assert top.returncode == 0 and all(c in top.stdout for c in cli.COMMANDS)
  sub = subprocess.run([str(exe), "distill", "--help"], env=_env(), capture_output=True, text=True, timeout=120)
  assert sub.returncode == 0 and sub.stdout.startswith("usage: jaxdistill distill")
  bad = subprocess.run([str(exe), "distil"], env=_env(), capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and _error_line(bad.stderr).startswith("error: unknown command 'distil'")
  run = subprocess.run([str(exe), "coreset", "--method", "random", "--out", str(tmp_path / "r"), *SHARED],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert (tmp_path / "r" / "synthetic.npz").exists() and not NOISE.search(run.stderr), run.stderr


@pytest.mark.parametrize("backend", ["default", "tfds"])
def test_runs_print_no_tensorflow_or_cuda_lines(tmp_path, backend):
  """A run prints no native log lines without TF_CPP_MIN_LOG_LEVEL; by default Fashion-MNIST is read from its
  IDX files, so TensorFlow is not even imported."""
  script = textwrap.dedent("""
      import sys
      from experiments import cli, coreset
      try:
        cli.run(coreset.main, sys.argv[1:])
      except SystemExit as e:
        print("RESULT", e.code, "tensorflow" in sys.modules)
  """)
  env = _env() if backend == "default" else _env(JAXDISTILL_DATA_BACKEND="tfds")
  proc = subprocess.run([sys.executable, "-c", script, "--method", "random", "--out", str(tmp_path / "r"), *SHARED],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert f"RESULT 0 {backend == 'tfds'}" in proc.stdout, proc.stderr[-3000:]
  assert not NOISE.search(proc.stderr), proc.stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux's")
def test_peak_memory_is_the_process_own_not_its_parents():
  """A command started from a large parent (here ~1.5 GB resident) reports its own peak: Linux carries
  ``ru_maxrss`` across ``execve``, which made the memory test read the pytest session's 4.4 GB in CI."""
  ballast = np.ones(1_500_000_000 // 8)
  ballast += 1.0  # touch every page
  script = "from experiments import common; print(common.peak_memory_mb())"
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 0 < float(proc.stdout.split()[-1]) < 1000 < common.peak_memory_mb(), (proc.stdout, ballast[0])


@pytest.mark.slow
def test_dm_ipc10_peak_memory_within_2_5_gb(tmp_path):
  """The DM IPC 10 run of `make run` (ConvNet-128 embedding, 64 real images per class, 3 ConvNet-128 evaluation
  networks tested on the whole test split), shortened to 2 iterations and 1 epoch: peak resident memory, as
  recorded in metrics.json, stays within 2.5 GB (it was 6.2-6.7 GB)."""
  proc = _cli("experiments.distill", "--method", "dm", "--ipc", "10", "--iterations", "2", "--real-per-class", "64",
              "--width", "128", "--eval-models", "3", "--eval-epochs", "1", "--quiet", "--out", tmp_path / "dm",
              timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = io.load_json(str(tmp_path / "dm" / "metrics.json"))
  assert metrics["test_size"] == 10000 and metrics["eval_models"] == 3
  assert 0 < metrics["peak_memory_mb"] <= 2500, metrics["peak_memory_mb"]


def test_eval_test_batch_bounds_the_activation():
  assert common.eval_test_batch(3, 128, (28, 28, 1)) == 222
  assert common.eval_test_batch(1, 8, (28, 28, 1)) == 1000
  assert common.eval_test_batch(20, 128, (32, 32, 3)) == 25
  assert 3 * 128 * 28 * 28 * common.eval_test_batch(3, 128, (28, 28, 1)) <= 2 ** 26
