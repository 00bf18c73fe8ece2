"""The paper protocol on Fashion-MNIST, in resumable chunks: DC, DSA, DM and MTT at IPC 1 / 10 / 50.

    python -m experiments.full --out runs/full                  # one chunk of <= --budget-seconds (540)
    python -m experiments.main --full --out runs/full           # the same
    make full                                                   # the same, into runs/full

Each call works through the plan below in order until its time budget is spent, then returns; calling it again
with the same ``--out`` continues where it stopped (finished jobs are skipped, an interrupted distillation resumes
from its checkpoint bit-for-bit, an interrupted expert buffer keeps its finished shards). Every job writes what
the CPU runs write (``synthetic.npz``, ``metrics.json``, ``grid.png``, ``loss.png``); after each call
``OUT/table.md`` and ``OUT/status.json`` list every job, its state and its accuracy next to the published figure.

The plan (``--methods`` / ``--ipcs`` select part of it): for every method and IPC,
``experiments.distill --method M --ipc K --preset paper`` (the published hyperparameters, ``jaxdistill.presets``;
each method's own evaluation protocol: DC 300 epochs without augmentation, DSA/DM/MTT 1000 epochs with DSA,
MTT with its learned lr; the number of models the preset gives: 20 for DC/DSA/DM as their code's
``num_eval``, 5 for MTT), and for MTT first the expert buffer (:data:`BUFFER_PAPER`).

Sized for an accelerator: on a 2-core CPU the plan takes weeks. Needs no TensorFlow (the data layer reads the
IDX files when TFDS is absent). ``--extra`` / ``--buffer-extra`` append flags to every distillation / the buffer
job (e.g. tiny budgets for a smoke test).
"""
from __future__ import annotations

import argparse
import os
import shlex
import time
from typing import Dict, List, NamedTuple, Optional

from experiments import cli
from experiments.published import published

io = cli.lazy("jaxdistill.io")  # imported on first use: --help answers before JAX (experiments.cli)

METHODS = ("dm", "dc", "dsa", "mtt")
IPCS = (1, 10, 50)
# The expert buffer for MTT. Source: MTT's buffer.py defaults and README (CIFAR-10: 100 experts x 50 epochs,
# ConvNet-128, SGD lr 0.01 without momentum, DSA); the MTT paper gives no Fashion-MNIST buffer, so CIFAR-10's
# is used (without ZCA: Fashion-MNIST is grey-scale and MTT whitens only its RGB datasets).
BUFFER_PAPER = ["--experts", "100", "--epochs", "50", "--width", "128", "--lr", "0.01", "--experts-per-shard",
                "10"]
STATUS_FILE = "status.json"


class Job(NamedTuple):
  """One step of the plan: ``kind`` is ``"buffer"`` or ``"distill"``; ``name`` its folder under ``--out``."""
  kind: str
  name: str
  method: Optional[str] = None
  ipc: Optional[int] = None


def plan(methods=METHODS, ipcs=IPCS) -> List[Job]:
  """The jobs in the order they run: DM, DC, DSA at every IPC, then MTT's buffer, then MTT."""
  jobs = []
  for m in methods:
    if m == "mtt":
      jobs.append(Job("buffer", "buffer"))
    jobs += [Job("distill", f"{m}_ipc{k}", m, k) for k in ipcs]
  return jobs


def job_done(out: str, job: Job) -> bool:
  folder = os.path.join(out, job.name)
  name = "buffer.json" if job.kind == "buffer" else "metrics.json"
  return os.path.exists(os.path.join(folder, name))


def _split_list(text: str, allowed, cast=str, flag="") -> tuple:
  items = tuple(cast(t.strip()) for t in text.split(",") if t.strip())
  bad = [i for i in items if i not in allowed]
  if not items or bad:
    raise ValueError(f"{flag} must be a comma-separated subset of {list(allowed)}, got {text!r}.")
  return items


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="run folder (created, or continued if it holds a full run)")
  p.add_argument("--budget-seconds", type=float, default=540.0,
                 help="wall time of this call (default 540: fits a 10-minute command with room to spare)")
  p.add_argument("--eval-reserve", type=float, default=60.0,
                 help="seconds kept free after a distillation's time budget for its evaluation")
  p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
  p.add_argument("--ipcs", default=",".join(map(str, IPCS)), help="subset of 1,10,50")
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--extra", default="", help="more flags for every distillation run")
  p.add_argument("--buffer-extra", default="", help="more flags for the expert-buffer run")
  p.add_argument("--quiet", action="store_true")
  return p


def _distill_argv(args, job: Job, budget: float) -> List[str]:
  argv = ["--method", job.method, "--ipc", str(job.ipc), "--dataset", args.dataset, "--preset", "paper",
          "--resume", "--time-budget", f"{budget:.0f}", "--out", os.path.join(args.out, job.name)]
  if job.method == "mtt":
    argv += ["--buffer", os.path.join(args.out, "buffer")]
  if args.quiet:
    argv.append("--quiet")
  return argv + shlex.split(args.extra)


def _buffer_argv(args, budget: float) -> List[str]:
  argv = ["--dataset", args.dataset, "--resume", "--time-budget", f"{budget:.0f}", "--out",
          os.path.join(args.out, "buffer")] + BUFFER_PAPER
  if args.quiet:
    argv.append("--quiet")
  return argv + shlex.split(args.buffer_extra)


def run_job(args, job: Job, budget: float) -> Dict:
  """Runs (or continues) one job for at most about ``budget`` seconds; returns its CLI's result."""
  from experiments import buffers, distill
  if job.kind == "buffer":
    return buffers.main(_buffer_argv(args, budget))
  return distill.main(_distill_argv(args, job, budget))


def status(out: str, jobs: List[Job]) -> List[Dict]:
  """One entry per job: its state (done / partial / pending) and, when done, its accuracy and published figure."""
  rows = []
  for job in jobs:
    folder = os.path.join(out, job.name)
    row = {"job": job.name, "kind": job.kind, "method": job.method, "ipc": job.ipc, "state": "pending"}
    if job_done(out, job):
      row["state"] = "done"
      if job.kind == "distill":
        m = io.load_json(os.path.join(folder, "metrics.json"))
        row.update(accuracy_mean=100 * m["test_accuracy_mean"], accuracy_std=100 * m["test_accuracy_std"],
                   eval_models=m["eval_models"], eval_epochs=m["eval_epochs"], iterations=m["iterations"],
                   published=published(job.method, job.ipc), seconds=m.get("seconds"), device=m.get("device"))
      else:
        meta = io.load_json(os.path.join(folder, "buffer.json"))
        row.update(experts=meta["num_experts"], epochs=meta["epochs"],
                   final_expert_accuracy=100 * meta["test_accuracy_mean"][-1])
    elif os.path.isdir(folder) and os.listdir(folder):
      row["state"] = "partial"
      progress = os.path.join(folder, "progress.json")
      if os.path.exists(progress):
        p = io.load_json(progress)
        row["progress"] = f"{p['iterations_done']} / {p['iterations']} iterations"
    rows.append(row)
  return rows


def table(rows: List[Dict]) -> str:
  """Markdown: every job with its state, our accuracy and the published one."""
  lines = ["| job | state | ours (%) | published (%) | evaluation | device |", "|---|---|---|---|---|---|"]
  for r in rows:
    if r["kind"] == "buffer":
      ours = (f"{r['experts']} experts x {r['epochs']} epochs, expert accuracy {r['final_expert_accuracy']:.1f}"
              if r["state"] == "done" else "–")
      lines.append(f"| {r['job']} | {r['state']} | {ours} | – | – | – |")
      continue
    ours = f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}" if r["state"] == "done" else r.get("progress", "–")
    pub = "–" if r.get("published") is None else f"{r['published']:.1f}"
    ev = f"{r['eval_models']} x {r['eval_epochs']} epochs" if r["state"] == "done" else "–"
    lines.append(f"| {r['job']} | {r['state']} | {ours} | {pub} | {ev} | {r.get('device') or '–'} |")
  return "\n".join(lines)


def main(argv=None) -> Dict:
  args = build_parser().parse_args(argv)
  start = time.monotonic()
  if not args.budget_seconds > 0:
    raise ValueError(f"--budget-seconds must be > 0, got {args.budget_seconds}.")
  methods = _split_list(args.methods, METHODS, flag="--methods")
  ipcs = _split_list(args.ipcs, IPCS, int, flag="--ipcs")
  jobs = plan(methods, ipcs)
  marker = os.path.join(args.out, STATUS_FILE)
  if os.path.isdir(args.out) and os.listdir(args.out) and not os.path.exists(marker):
    raise ValueError(f"--out {args.out!r} is not empty and holds no {STATUS_FILE}: not a full run to continue; "
                     "choose another folder.")
  os.makedirs(args.out, exist_ok=True)
  io.save_json(marker, {"complete": False, "jobs": status(args.out, jobs)})
  ran = []
  for job in jobs:
    if job_done(args.out, job):
      continue
    left = args.budget_seconds - (time.monotonic() - start)
    budget = left - (args.eval_reserve if job.kind == "distill" else 0.0)
    if budget < 1.0:
      break
    result = run_job(args, job, budget)
    ran.append(job.name)
    if not result.get("complete", True):
      break  # the budget is spent inside this job
  rows = status(args.out, jobs)
  complete = all(r["state"] == "done" for r in rows)
  text = table(rows)
  io.save_text(os.path.join(args.out, "table.md"),
               f"# Paper protocol, {args.dataset}\n\n{text}\n\nPublished: the papers' Fashion-MNIST tables "
               "(METHODS.md); DM's paper reports none.\n")
  summary = {"complete": complete, "ran": ran, "jobs": rows, "seconds": time.monotonic() - start}
  io.save_json(marker, summary)
  done = sum(r["state"] == "done" for r in rows)
  print(f"{text}\n\n{done} of {len(rows)} jobs done"
        + ("." if complete else f"; run the same command again to continue ({args.out})."))
  return summary


if __name__ == "__main__":
  cli.run(main)
