"""How every jaxdistill command runs: one-line errors, exit codes, quiet start; and the ``jaxdistill`` command.

    jaxdistill distill --method dm --ipc 10 --out runs/dm    # = python -m experiments.distill ...
    jaxdistill coreset|evaluate|buffers|train_generator|continual|nas|full|main ...
    jaxdistill --help

:func:`run` calls a CLI's ``main(argv)`` (which raises, so tests and notebooks get exceptions) and turns what it
raises into what a command line should show:

* a **user error** — a ``ValueError`` / ``FloatingPointError`` raised by jaxdistill's own code (a bad flag value, a
  missing or corrupt file, a synthetic set that does not fit the dataset, ...) or an ``OSError`` naming a file —
  prints one line ``error: ...`` and exits 1; argparse's usage errors print one line and exit 2;
* ``--debug`` (or ``JAXDISTILL_DEBUG=1``) shows the Python traceback instead; any other exception (a bug) shows it
  always, and exits 1;
* Ctrl-C exits 130 with a line; during distillation the loop writes its checkpoint first and the line says how
  to resume (:class:`jaxdistill.loop.Interrupted`);
* in a ``--distributed`` job, a failure (e.g. another process was killed: the collective fails) is reported
  on one line and the process exits at once instead of waiting for the peers at JAX's shutdown barrier.

Quiet start: this module imports only the standard library, and the CLIs import JAX, TensorFlow and the
library lazily (:func:`lazy`), so ``--help`` and argument errors answer before any of them is loaded.
``TF_CPP_MIN_LOG_LEVEL`` defaults to 3 and the native log lines TensorFlow prints while it is imported
("Could not find cuda drivers", oneDNN notes) are discarded (:func:`quiet_native_logs`; not under ``--debug``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import os
import shlex
import sys
import traceback
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

DEBUG_ENV = "JAXDISTILL_DEBUG"
# ``jaxdistill COMMAND`` -> the module whose ``main(argv)`` runs it.
COMMANDS = {
    "distill": "experiments.distill",
    "coreset": "experiments.coreset",
    "evaluate": "experiments.evaluate",
    "buffers": "experiments.buffers",
    "train_generator": "experiments.train_generator",
    "continual": "experiments.continual",
    "nas": "experiments.nas",
    "full": "experiments.full",
    "main": "experiments.main",
}
SUMMARIES = {
    "distill": "distill a synthetic set (DC, DSA, DM, MTT, KIP, FRePo, GLaD, ...)",
    "coreset": "select real images per class (random, herding, k-center, forgetting)",
    "evaluate": "evaluate a saved synthetic.npz across architectures",
    "buffers": "train expert trajectories for MTT / TESLA",
    "train_generator": "train a class-conditional generator as a GAN (GLaD's prior)",
    "continual": "class-incremental learning with a condensed memory",
    "nas": "architecture search with proxy training sets",
    "full": "the paper protocol (DC, DSA, DM, MTT at IPC 1/10/50) in resumable chunks",
    "main": "the job of `make run`: DM at IPC 10 next to a random subset",
}
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Messages of a collective or the coordination service failing because another process of the job died.
_DISTRIBUTED_FAILURES = ("gloo", "connection closed by peer", "connection reset", "coordination service",
                         "heartbeat", "barrier failed", "task is set to error")
_PACKAGES = ("jaxdistill", "experiments")
# Modules whose import prints native log lines that no environment variable turns off.
NOISY_IMPORTS = ("tensorflow",)


class LazyModule:
  """A module imported on first attribute access: ``jax = lazy("jax")`` at the top of a CLI keeps ``--help``
  fast, and ``jax.random.PRNGKey`` later imports JAX and reads the attribute."""

  def __init__(self, name: str):
    self.__dict__["_name"] = name

  def __getattr__(self, attr: str):
    return getattr(importlib.import_module(self.__dict__["_name"]), attr)

  def __repr__(self) -> str:
    return f"<lazy module {self.__dict__['_name']!r}>"


def lazy(name: str) -> LazyModule:
  """A :class:`LazyModule` for the module ``name`` (nothing is imported now)."""
  return LazyModule(name)


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds ``--debug`` (handled by :func:`run`, which removes it before ``main`` parses; listed for ``--help``
  and accepted when ``main`` is called directly)."""
  parser.add_argument("--debug", action="store_true",
                      help=f"show the Python traceback of an error (also ${DEBUG_ENV}=1)")
  return parser


def debug_requested(argv: Sequence[str], environ=None) -> bool:
  """True when ``--debug`` is among the options (before a ``--``) or ``$JAXDISTILL_DEBUG`` is set (not 0)."""
  environ = os.environ if environ is None else environ
  options = list(argv)[:list(argv).index("--")] if "--" in argv else list(argv)
  return "--debug" in options or environ.get(DEBUG_ENV, "") not in ("", "0")


def strip_debug(argv: Sequence[str]) -> List[str]:
  """``argv`` without ``--debug`` (options before a ``--`` only)."""
  argv = list(argv)
  end = argv.index("--") if "--" in argv else len(argv)
  return [a for a in argv[:end] if a != "--debug"] + argv[end:]


def one_line(text: str) -> str:
  """``text`` with runs of whitespace (newlines included) collapsed to one space."""
  return " ".join(str(text).split())


def _raised_in_project(exc: BaseException) -> bool:
  """True when the innermost frame of ``exc``'s traceback is in the ``jaxdistill`` or ``experiments`` package
  (so the message was written for the user), not inside JAX, NumPy or another library."""
  tb = exc.__traceback__
  if tb is None:
    return True
  while tb.tb_next is not None:
    tb = tb.tb_next
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.abspath(tb.tb_frame.f_code.co_filename)
  return any(path.startswith(os.path.join(root, p) + os.sep) for p in _PACKAGES)


def is_distributed_failure(exc: BaseException) -> bool:
  """True for the errors JAX raises when another process of a distributed job stopped (a failed collective, a
  missed heartbeat)."""
  text = str(exc).lower()
  return any(s in text for s in _DISTRIBUTED_FAILURES)


def user_message(exc: BaseException) -> Optional[str]:
  """The one-line message for a user error, or None when ``exc`` is an internal error (traceback).

  User errors: ``ValueError`` / ``FloatingPointError`` raised by this project's code, and ``OSError`` naming a
  file (missing, not permitted, read-only file system, ...)."""
  if isinstance(exc, OSError) and getattr(exc, "filename", None) is not None:
    return one_line(f"{exc.strerror or exc}: {exc.filename!r}")
  if isinstance(exc, (ValueError, FloatingPointError)) and _raised_in_project(exc):
    return one_line(str(exc)) or type(exc).__name__
  return None


def interrupt_message(exc: BaseException) -> str:
  """The line printed for Ctrl-C: where the checkpoint is (or what was kept) and the command that resumes, as far
  as the interrupted code attached them (:class:`jaxdistill.loop.Interrupted`; ``kept``, ``resume_command``)."""
  parts = ["interrupted"]
  if getattr(exc, "iteration", None) is not None:
    parts[0] += f" at image update {exc.iteration} of {exc.total}"
  checkpoint = getattr(exc, "checkpoint", None)
  if checkpoint:
    parts.append(f"checkpoint written to {checkpoint}")
  if getattr(exc, "kept", None):
    parts.append(f"kept: {exc.kept}")
  if getattr(exc, "resume_command", None):
    parts.append(f"resume with: {exc.resume_command}")
  elif checkpoint:
    parts.append("resume with the same command and --resume")
  return "; ".join(parts)


def resume_command(module: str, argv: Sequence[str]) -> str:
  """``python -m MODULE ARGV... --resume`` (``--resume`` added once), shell-quoted."""
  args = list(argv) + ([] if "--resume" in argv else ["--resume"])
  return f"python -m {module} " + shlex.join(args)


def _distributed_active() -> bool:
  jax = sys.modules.get("jax")
  if jax is None:
    return False
  try:
    return bool(jax.distributed.is_initialized())
  except Exception:  # an older JAX without is_initialized, or JAX half torn down
    return False


def _flush() -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:
      pass


def distributed_failure_line(detail: str) -> str:
  """The one line reported when a distributed job fails because another process stopped."""
  return ("error: the distributed job failed: another process stopped or cannot be reached "
          f"({one_line(detail)[:300]})")


def _finish(code: int) -> None:
  """Exits with ``code``. In a distributed job after an error, at once (``os._exit``): JAX's shutdown would
  wait at a barrier for processes that are gone. The output folder's lock is released first."""
  if code != 0 and _distributed_active():
    io = sys.modules.get("jaxdistill.io")
    if io is not None:
      io.release_locks()
    _flush()
    os._exit(code)
  sys.exit(code)


class _SilentLoader(importlib.abc.Loader):
  """Runs another loader with file descriptor 2 pointed at ``/dev/null`` (native code writes there)."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with silenced_stderr():
      self._loader.exec_module(module)

  def __getattr__(self, attr):
    return getattr(self._loader, attr)


class _SilentImports(importlib.abc.MetaPathFinder):
  """Finds the modules in ``names`` with the other finders and wraps their loader in :class:`_SilentLoader`."""

  def __init__(self, names: Sequence[str]):
    self.names = frozenset(names)

  def find_spec(self, fullname, path, target=None):
    if fullname not in self.names:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(fullname, path, target)
      if spec is not None:
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
          spec.loader = _SilentLoader(spec.loader)
        return spec
    return None


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
  """File descriptor 2 goes to ``/dev/null`` inside the block (Python's ``sys.stderr`` is flushed first)."""
  _flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def quiet_native_logs(names: Sequence[str] = NOISY_IMPORTS) -> None:
  """Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless set, and discards what the modules ``names`` (TensorFlow) write to
  stderr while they are imported: their C++ logging prints "Could not find cuda drivers" and similar lines
  before it reads any setting. Installed once per process by :func:`run`."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if any(isinstance(f, _SilentImports) for f in sys.meta_path):
    return
  if not any(n in sys.modules for n in names):
    sys.meta_path.insert(0, _SilentImports(names))


def _usage_error(parser: argparse.ArgumentParser, message: str):
  parser.exit(EXIT_USAGE, f"error: {one_line(message)} (see {parser.prog} --help)\n")


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
  """argparse's usage errors print one line ``error: MESSAGE (see PROG --help)`` (exit 2) inside the block,
  instead of the usage text and ``PROG: error: ...``."""
  original = argparse.ArgumentParser.error
  argparse.ArgumentParser.error = _usage_error
  try:
    yield
  finally:
    argparse.ArgumentParser.error = original


def outcome(exc: BaseException, debug: bool) -> Tuple[int, Optional[str], bool]:
  """``(exit code, line to print or None, print the traceback)`` for an exception that ended a command."""
  if isinstance(exc, KeyboardInterrupt):
    return EXIT_INTERRUPTED, interrupt_message(exc), debug
  if _distributed_active() and is_distributed_failure(exc):
    return EXIT_USER_ERROR, distributed_failure_line(str(exc)), debug
  message = user_message(exc)
  if message is None:
    return EXIT_USER_ERROR, None, True
  return EXIT_USER_ERROR, f"error: {message}", debug


def run(main: Callable[[List[str]], object], argv: Optional[Sequence[str]] = None) -> None:
  """Runs ``main(argv)`` as a command (module docstring: error lines, exit codes, quiet start) and exits:
  0 on success, 1 for errors, 2 for usage errors, 130 for Ctrl-C."""
  argv = list(sys.argv[1:] if argv is None else argv)
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if getattr(main, "__module__", None) == "__main__" and spec is not None:
    sys.argv[0] = f"python -m {spec.name}"  # argparse's prog: the command as typed, not "distill.py"
  debug = debug_requested(argv)
  if debug:
    os.environ[DEBUG_ENV] = "1"
  else:
    quiet_native_logs()
  with one_line_usage_errors():
    try:
      main(strip_debug(argv))
    except SystemExit:
      raise
    except BaseException as exc:  # noqa: B902 -- KeyboardInterrupt included on purpose
      code, line, show_traceback = outcome(exc, debug)
      _flush()
      if show_traceback:
        traceback.print_exception(exc)
      if line:
        print(line, file=sys.stderr)
      _finish(code)
  _flush()
  sys.exit(0)


def usage() -> str:
  """The text of ``jaxdistill --help``."""
  width = max(len(c) for c in COMMANDS)
  rows = "\n".join(f"  {c:<{width}}  {SUMMARIES[c]}" for c in COMMANDS)
  return (f"usage: jaxdistill COMMAND [options]   (jaxdistill COMMAND --help lists a command's options)\n\n"
          f"commands:\n{rows}\n\n"
          f"Each command is also `python -m experiments.COMMAND`. Errors print one line `error: ...` (exit 1; "
          f"2 for usage errors, 130 for Ctrl-C); --debug or {DEBUG_ENV}=1 shows the traceback.\n")


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``jaxdistill`` console script: ``jaxdistill COMMAND [options]`` runs ``experiments.COMMAND``."""
  argv = list(sys.argv[1:] if argv is None else argv)
  rest = strip_debug(argv)
  if not rest or rest[0] in ("-h", "--help"):
    sys.stdout.write(usage())
    sys.exit(0 if rest else EXIT_USAGE)
  if rest[0] == "--version":
    from jaxdistill import __version__
    print(f"jaxdistill {__version__}")
    sys.exit(0)
  command = rest[0]
  if command not in COMMANDS:
    sys.stderr.write(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)} "
                     "(see jaxdistill --help)\n")
    sys.exit(EXIT_USAGE)
  sys.argv[0] = f"jaxdistill {command}"  # argparse's prog in usage lines and messages
  module = importlib.import_module(COMMANDS[command])
  run(module.main, argv[argv.index(command) + 1:] + (["--debug"] if "--debug" in argv[:argv.index(command)]
                                                    else []))


if __name__ == "__main__":
  main()
