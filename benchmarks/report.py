"""Builds ``benchmarks/README.md`` from the JSON results written by :mod:`benchmarks.run`.

One summary table (a row per method × IPC, with the random-subset and whole-data references measured under the
same evaluation and the published full-protocol figure beside ours), then one section per benchmark: when and
where it ran, the protocols it used, its accuracy rows and its other measurements (speed, memory, ...).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Dict, List

from jaxdistill import io

REFERENCE_METHODS = ("random", "whole_dataset")
_STANDARD = {"eval_protocol", "benchmark", "method", "dataset", "ipc", "test_accuracy_mean", "test_accuracy_std", "eval_seconds",
             "seconds_per_iteration", "peak_memory_mb", "protocol", "published", "machine", "load_average"}


def load_results(folder: str) -> List[Dict]:
  """Every ``*.json`` result file in ``folder`` (sorted by name), as dicts with ``rows``."""
  out = []
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    with open(path) as f:
      data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
      data.setdefault("benchmark", os.path.basename(path)[:-5])
      out.append(data)
  return out


def _acc(row) -> str:
  m = row.get("test_accuracy_mean")
  if m is None:
    return "–"
  s = row.get("test_accuracy_std") or 0.0
  return f"{100 * m:.1f} ± {100 * s:.1f}"


def _num(v, fmt="{:.4g}") -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    return fmt.format(v)
  return str(v)


def _reference(rows, method, ipc, eval_protocol=None):
  """The reference row (``random`` at ``ipc``, or ``whole_dataset``), preferring one evaluated with the same
  ``eval_protocol``; a random subset is only used when its evaluation matches."""
  found = [r for r in rows if r.get("method") == method and r.get("test_accuracy_mean") is not None
           and (method == "whole_dataset" or r.get("ipc") == ipc)]
  same = [r for r in found if r.get("eval_protocol") == eval_protocol]
  if same:
    return same[0]
  return found[0] if (found and method == "whole_dataset") else None


def _also(row) -> str:
  """The row's other accuracies (non-standard keys with "accuracy", e.g. DD's unrolled accuracy, LD's hard-label
  baseline, KIP's KRR accuracy) as ``name m ± s`` in %, ``; ``-separated."""
  parts = []
  for k, v in row.items():
    if k in _STANDARD or "accuracy" not in k or k.endswith("_std") or not isinstance(v, float):
      continue
    name = k[:-len("_mean")] if k.endswith("_mean") else k
    std = row.get(name + "_std")
    parts.append(f"{name} {100 * v:.1f}" + (f" ± {100 * std:.1f}" if isinstance(std, float) else ""))
  return "; ".join(parts) or "–"


def summary_table(results: List[Dict]) -> str:
  """Markdown: one row per (method, IPC) with an accuracy, across every non-quick benchmark."""
  rows = [{"benchmark": res["benchmark"], **r} for res in results if not res.get("quick") for r in res["rows"]]
  acc_rows = [r for r in rows if r.get("test_accuracy_mean") is not None
              and r.get("method") not in REFERENCE_METHODS]
  lines = ["| method | IPC | ours (%) | random subset (%) | whole data (%) | s / iteration | peak MB | "
           "published (%) | benchmark |", "|---|---|---|---|---|---|---|---|---|"]
  for r in sorted(acc_rows, key=lambda r: (r.get("ipc") or 0, r["method"])):
    rnd = _reference(rows, "random", r.get("ipc"), r.get("eval_protocol"))
    whole = _reference(rows, "whole_dataset", None, r.get("eval_protocol"))
    lines.append(f"| {r['method']} | {r.get('ipc')} | {_acc(r)} | {_acc(rnd) if rnd else '–'} | "
                 f"{_acc(whole) if whole else '–'} | {_num(r.get('seconds_per_iteration'))} | "
                 f"{_num(r.get('peak_memory_mb'), '{:.0f}')} | {_num(r.get('published'))} | {r['benchmark']} |")
  return "\n".join(lines)


def section(res: Dict) -> str:
  """Markdown for one benchmark's results."""
  rows = res["rows"]
  machines = sorted({r.get("machine", "?") for r in rows})
  out = [f"## {res['benchmark']}" + (" (quick smoke settings — not a result)" if res.get("quick") else "")
         + (" (interrupted: the rows below are what it measured)" if res.get("complete") is False else ""),
         "", f"Ran on {', '.join(machines)}; {res.get('seconds') or 0:.0f} s in all; finished "
         f"{res.get('finished', '?')}."]
  loads = [r["load_average"] for r in rows if r.get("load_average") is not None]
  if loads:
    out[-1] += f" 1-min load average while measuring: {min(loads):.1f}–{max(loads):.1f} (2 cores)."
  protocols = []
  for r in rows:
    if r.get("protocol") and r["protocol"] not in protocols:
      protocols.append(r["protocol"])
  if protocols:
    out += ["", "Protocols:"] + [f"- P{i + 1}: {p}" for i, p in enumerate(protocols)]
  acc = [r for r in rows if r.get("test_accuracy_mean") is not None]
  if acc:
    out += ["", "| method | IPC | accuracy (%) | also measured (%) | s / iteration | peak MB | published (%) | "
            "protocol |", "|---|---|---|---|---|---|---|---|"]
    for r in acc:
      p = f"P{protocols.index(r['protocol']) + 1}" if r.get("protocol") in protocols else "–"
      out.append(f"| {r['method']} | {_num(r.get('ipc'))} | {_acc(r)} | {_also(r)} | "
                 f"{_num(r.get('seconds_per_iteration'))} | {_num(r.get('peak_memory_mb'), '{:.0f}')} | "
                 f"{_num(r.get('published'))} | {p} |")
  barred = [r for r in rows if r.get("bar_points") is not None and r.get("test_accuracy_mean") is not None]
  if barred:
    out += ["", "Against the random subset under the same evaluation (bar: ours ≥ random + the points shown); "
            "curve: accuracy (%) after that many iterations, the last point the final evaluation:", "",
            "| method | IPC | ours (%) | random (%) | margin (points) | bar | meets the bar | curve |",
            "|---|---|---|---|---|---|---|---|"]
    for r in barred:
      rnd = next((x for x in rows if x.get("method") == "random" and x.get("ipc") == r.get("ipc")
                  and x.get("eval_protocol") == r.get("eval_protocol") and x.get("test_accuracy_mean") is not None),
                 None)
      margin = None if rnd is None else 100 * (r["test_accuracy_mean"] - rnd["test_accuracy_mean"])
      meets = "–" if margin is None else ("yes" if margin >= r["bar_points"] else "no")
      curve = ", ".join(f"{int(c[0])}: {c[1]:.1f}" for c in r.get("curve") or [])
      out.append(f"| {r['method']} | {_num(r.get('ipc'))} | {_acc(r)} | {_acc(rnd) if rnd else '–'} | "
                 f"{'–' if margin is None else f'{margin:+.1f}'} | +{r['bar_points']:g} | {meets} | {curve} |")
  parity = [r for r in rows if r.get("reference_code_accuracy") is not None]
  if parity:
    out += ["", "Parity with the authors' code run on this kind of machine (bar: ours ≥ reference − one std of "
            "ours):", "", "| method | IPC | ours (%) | reference code (%) | bar (%) | meets the bar |",
            "|---|---|---|---|---|---|"]
    for r in parity:
      out.append(f"| {r['method']} | {_num(r.get('ipc'))} | {_acc(r)} | {100 * r['reference_code_accuracy']:.1f} | "
                 f"{_num(r.get('parity_bar'))} | {'yes' if r.get('meets_parity') else 'no'} |")
  other = [r for r in rows if r.get("test_accuracy_mean") is None]
  if other:
    keys = []
    for r in other:
      keys += [k for k in r if k not in _STANDARD and k not in keys and not isinstance(r[k], (list, dict))]
    head = ["method", "IPC", "s / iteration", "peak MB"] + keys
    out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in other:
      vals = [r.get("method"), r.get("ipc"), r.get("seconds_per_iteration"), r.get("peak_memory_mb")]
      vals += [r.get(k) for k in keys]
      out.append("| " + " | ".join(_num(v) for v in vals) + " |")
  return "\n".join(out)


def render(results: List[Dict]) -> str:
  parts = ["# jaxdistill benchmarks", "",
           "Generated by `make bench` (`python -m benchmarks.run`) from `benchmarks/results/*.json`; do not edit "
           "by hand. All CPU figures use **reduced protocols** (stated per benchmark below): the papers' "
           "protocols (1k–20k distillation iterations, 1000-epoch evaluations of 5–100 models) do not fit a 2-core "
           "machine. Accuracies are Fashion-MNIST test accuracy, mean ± std over the evaluation models; the "
           "*published* column is the paper's full-protocol figure, shown for orientation, not as a like-for-like "
           "comparison. The random-subset column is measured under the same evaluation as the row; the "
           "whole-data column is the upper bound of the foundation benchmark (its protocol is stated there). "
           "Timings taken while other jobs shared the CPU record the load average. **Rows finished before "
           "2026-12-05 predate the evaluation fixes of that day** (the reference `evaluate_synset` schedule: E + 1 "
           "epochs, decay after epoch E/2 + 1 with a momentum reset; per-method label rules) and the re-preparation "
           "of Fashion-MNIST in file order; they describe the older code until re-measured (each section gives its "
           "finish date).", "",
           "## Summary", "", summary_table(results)]
  for res in results:
    parts += ["", section(res)]
  return "\n".join(parts) + "\n"


def write_report(folder: str, path: str) -> str:
  """Regenerates the markdown report ``path`` from ``folder/*.json`` (atomic write)."""
  text = render(load_results(folder))
  return io.save_text(path, text)
