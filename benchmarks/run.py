"""Runs the benchmarks and regenerates ``benchmarks/README.md``.

    python -m benchmarks.run                      # every benchmarks/bench_*.py, reduced CPU protocols
    python -m benchmarks.run --only matching,foundation
    python -m benchmarks.run --quick --out /tmp/bench   # tiny settings (smoke test), results elsewhere
    python -m benchmarks.run --only matching --methods dsa,dc --ipcs 10   # re-measure some rows only

With ``--methods`` / ``--ipcs`` a module (one whose ``run`` takes ``select``) measures only the rows selected, and
the rows already in its results file that are not selected are kept.

Each module's rows go to ``<out>/<name>.json`` (``{"rows": [...], "quick": bool, "seconds": float}``, written
atomically); then :func:`benchmarks.report.write_report` rebuilds the markdown table from every JSON in the
results folder. ``make bench`` calls this; ``BENCH_ARGS="--only ..."`` passes flags.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import inspect
import json
import os
import time

from benchmarks import report
from jaxdistill import io

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def available() -> list:
  """Names of the benchmark modules (``benchmarks/bench_<name>.py``), sorted."""
  return sorted(os.path.basename(p)[len("bench_"):-3] for p in glob.glob(os.path.join(HERE, "bench_*.py")))


def make_select(methods=None, ipcs=None):
  """``select(method, ipc) -> bool`` for the given method names / IPCs (None: all), or None for everything."""
  if methods is None and ipcs is None:
    return None
  methods = None if methods is None else frozenset(methods)
  ipcs = None if ipcs is None else frozenset(int(i) for i in ipcs)
  return lambda method, ipc: ((methods is None or method in methods) and (ipcs is None or ipc in ipcs))


def run_one(name: str, quick: bool, out_dir: str, select=None) -> str:
  """Runs ``benchmarks.bench_<name>.run(quick)`` and writes ``out_dir/<name>.json``; returns the path.

  ``run`` may return a list of rows or yield them one by one; yielded rows are saved as they arrive (with
  ``"complete": false`` until the last), so an interrupted long benchmark keeps what it measured. With
  ``select`` (:func:`make_select`) only the selected rows are measured (``run(quick, select=...)``) and the
  unselected rows of an existing results file are kept ahead of them.
  """
  module = importlib.import_module(f"benchmarks.bench_{name}")
  start = time.perf_counter()
  path = os.path.join(out_dir, f"{name}.json")
  rows, kwargs = [], {}
  if select is not None:
    if "select" not in inspect.signature(module.run).parameters:
      raise ValueError(f"--methods/--ipcs: benchmark {name!r} measures all its rows; run it without them.")
    kwargs["select"] = select
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      if old.get("quick", False) == quick:
        rows = [r for r in old["rows"] if not select(r.get("method"), r.get("ipc"))]

  def save(complete: bool):
    io.save_json(path, {"benchmark": name, "quick": quick, "seconds": time.perf_counter() - start, "rows": rows,
                        "complete": complete,
                        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})

  for r in module.run(quick=quick, **kwargs):
    rows.append(r)
    save(False)
    print(f"  {name}: {r.get('method')} ipc={r.get('ipc')} acc={r.get('test_accuracy_mean')} "
          f"s/it={r.get('seconds_per_iteration')}", flush=True)
  save(True)
  print(f"benchmark {name}: {len(rows)} rows in {time.perf_counter() - start:.0f} s -> {path}", flush=True)
  return path


def main(argv=None):
  names = available()
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", default=None, help=f"comma-separated subset of {names}")
  parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke test, not a result)")
  parser.add_argument("--methods", default=None, help="comma-separated methods: measure only these rows")
  parser.add_argument("--ipcs", default=None, help="comma-separated IPCs: measure only these rows")
  parser.add_argument("--out", default=RESULTS, help="results folder (default benchmarks/results)")
  parser.add_argument("--report", default=None,
                      help="markdown file to regenerate (default: benchmarks/README.md for the default --out, "
                           "<out>/README.md otherwise)")
  parser.add_argument("--report-only", action="store_true", help="only regenerate the report")
  args = parser.parse_args(argv)
  chosen = names if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
  unknown = sorted(set(chosen) - set(names))
  if unknown:
    raise ValueError(f"--only: unknown benchmark(s) {unknown}; available: {names}.")
  split = lambda v: None if v is None else [t.strip() for t in v.split(",") if t.strip()]
  try:
    select = make_select(split(args.methods), split(args.ipcs))
  except ValueError:
    raise ValueError(f"--ipcs must be comma-separated integers, got {args.ipcs!r}.") from None
  os.makedirs(args.out, exist_ok=True)
  if not args.report_only:
    for name in chosen:
      run_one(name, args.quick, args.out, select)
  target = args.report or (os.path.join(HERE, "README.md") if os.path.abspath(args.out) == RESULTS
                           else os.path.join(args.out, "README.md"))
  report.write_report(args.out, target)
  print(f"report -> {target}")


if __name__ == "__main__":
  main()
