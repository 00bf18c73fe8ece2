"""Class-incremental learning with a condensed memory (GDumb-style; DM paper, Zhao & Bilen 2023, Sec. 4.3).

The classes of a dataset arrive in ``num_steps`` steps of ``classes_per_step`` classes, in an order drawn
from a seed (:func:`class_order`). At step ``t`` the learner sees only the training images of the new
classes and

1. condenses them into ``k`` images per class (:func:`condense`): DM (:func:`jaxdistill.loop.distill` with
   the ``dm`` objective restricted to the step's classes, labels remapped to ``0..m-1``), or the herding /
   random coreset baselines (:func:`jaxdistill.coreset.select`), and adds them to the memory, which keeps
   ``k`` images of every class seen so far (memory size ``k · seen``);
2. trains fresh networks from scratch on the whole memory (GDumb, Prabhu et al. 2020) with
   :func:`jaxdistill.evaluate.evaluate` — the classifier's outputs are the seen classes only (GDumb's masking
   of unseen classes), i.e. labels are mapped to their position in the class order;
3. reports test accuracy over the test images of the seen classes only.

Results are per step; :func:`summarize` gives mean ± std over seeds (each seed: its own class order and
randomness).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import jax
import numpy as np

from jaxdistill import coreset, io, loop, objectives, synthetic
from jaxdistill.augment import DEFAULT_STRATEGY, DIGIT_STRATEGY, default_params
from jaxdistill.evaluate import EvalResult, evaluate
from jaxdistill.models.layers import check_choice
from jaxdistill.validation import check_ints, check_network, check_positive

METHODS = ("dm", "herding", "random")


@dataclasses.dataclass(frozen=True)
class ContinualConfig:
  """Settings of the class-incremental benchmark.

  Attributes:
    method: how new classes are condensed: ``"dm"``, ``"herding"`` or ``"random"``.
    memory_per_class: ``k`` images kept per class.
    num_steps, classes_per_step: the stream (5 × 2 for the 10 classes of Fashion-MNIST).
    dm_iterations, dm_real_per_class, dm_width, dm_lr_img: DM condensation (paper: 20 000 iterations,
      256 real images per class, ConvNet-128, image lr 1.0; reduce on CPU).
    feature_width, feature_epochs, feature_max_examples: the network whose features herding uses
      (trained on the step's data only).
    eval_arch, eval_width, eval_models, eval_epochs, eval_dsa: the learner retrained on the memory.
  """
  method: str = "dm"
  memory_per_class: int = 10
  num_steps: int = 5
  classes_per_step: int = 2
  dm_iterations: int = 20000
  dm_real_per_class: int = 256
  dm_width: int = 128
  dm_lr_img: float = 1.0
  feature_width: int = 64
  feature_epochs: int = 3
  feature_max_examples: Optional[int] = None
  eval_arch: str = "convnet"
  eval_width: int = 128
  eval_models: int = 3
  eval_epochs: int = 1000
  eval_dsa: bool = True

  def validate(self):
    check_choice("method", self.method, METHODS)
    check_network(None, self.dm_width, prefix="dm_")
    check_network(None, self.feature_width, prefix="feature_")
    check_network(self.eval_arch, self.eval_width, prefix="eval_")
    check_ints(self, ("memory_per_class", "num_steps", "classes_per_step", "dm_iterations", "dm_real_per_class",
                      "feature_epochs", "eval_models", "eval_epochs"))
    check_positive(self, "dm_lr_img")
    check_ints(self, "feature_max_examples", optional=True)
    return self


class StepResult(NamedTuple):
  """One step of the stream: the classes added, all classes seen, memory size (images) and the learner's
  test accuracies (``[eval_models]`` fractions over the seen classes' test images)."""
  step: int
  new_classes: List[int]
  seen_classes: List[int]
  memory_size: int
  test_size: int
  accuracies: np.ndarray
  mean: float
  std: float
  condense_seconds: float
  train_seconds: float

  def to_dict(self) -> Dict:
    d = self._asdict()
    d["accuracies"] = [float(a) for a in self.accuracies]
    return d


class ContinualResult(NamedTuple):
  """A run over the whole stream: the class order, per-step results and the final memory
  (``memory_x [k · num_classes_seen, H, W, C]``, original class ids ``memory_y``)."""
  method: str
  seed: int
  order: np.ndarray
  steps: List[StepResult]
  memory_x: np.ndarray
  memory_y: np.ndarray

  def to_dict(self) -> Dict:
    return {"method": self.method, "seed": self.seed, "class_order": [int(c) for c in self.order],
            "steps": [s.to_dict() for s in self.steps]}


def class_order(seed: int, num_classes: int) -> np.ndarray:
  """The class order of a stream: a permutation of ``range(num_classes)`` drawn from ``PRNGKey(seed)``."""
  return np.asarray(jax.random.permutation(jax.random.PRNGKey(seed), num_classes), np.int64)


def step_classes(order, step: int, classes_per_step: int) -> np.ndarray:
  """The classes that arrive at ``step`` (0-based): ``order[step·m : (step+1)·m]``."""
  if step < 0 or (step + 1) * classes_per_step > len(order):
    raise ValueError(f"step must be in [0, {len(order) // classes_per_step}), got {step}.")
  return np.asarray(order[step * classes_per_step:(step + 1) * classes_per_step])


def condense(key, images, labels, classes: Sequence[int], config: ContinualConfig, *, digits: bool = False,
             progress: bool = False):
  """Condenses the training images of ``classes`` into ``config.memory_per_class`` images each.

  Only the images of ``classes`` are used (the learner sees the current step's data only). DM runs
  :func:`jaxdistill.loop.distill` with the ``dm`` objective over ``len(classes)`` classes (labels remapped
  to ``0..m-1``, initialised from random real images); herding / random select real images.

  Returns:
    ``(images [m·k, H, W, C], labels int [m·k])`` with the original class ids, class-major in ``classes``
    order.
  """
  config.validate()
  classes = np.asarray(classes)
  labels = np.asarray(labels)
  k = config.memory_per_class
  sel = np.flatnonzero(np.isin(labels, classes))
  xs = np.asarray(images)[sel]
  local = np.searchsorted(np.sort(classes), labels[sel])
  local = np.argsort(classes)[local].astype(np.int32)  # position of each label in ``classes``
  m = len(classes)
  if config.method == "dm":
    strategy = DIGIT_STRATEGY if digits else DEFAULT_STRATEGY
    cfg = objectives.default_config("dm", width=config.dm_width, dsa_strategy=strategy)
    obj = objectives.make_objective("dm", cfg, num_classes=m, image_shape=xs.shape[1:], ipc=k)
    k_init, k_loop = jax.random.split(key)
    syn = synthetic.init_pixels(k_init, "real", xs, local, m, k)
    lc = loop.LoopConfig(iterations=config.dm_iterations, real_per_class=config.dm_real_per_class,
                         lr_img=config.dm_lr_img)
    out = loop.distill(obj, synthetic.PIXELS, syn, xs, local, m, k_loop, lc, progress=progress)
    batch = synthetic.PIXELS.render(out.state.syn)
    mem_x, mem_local = np.asarray(batch.images), np.asarray(batch.labels)
  else:
    fcfg = coreset.FeatureNetConfig(width=config.feature_width, epochs=config.feature_epochs,
                                    max_examples=config.feature_max_examples)
    pos = coreset.select(config.method, key, xs, local, m, k, config=fcfg, progress=progress).reshape(-1)
    mem_x, mem_local = xs[pos], local[pos]
  return mem_x.astype(np.float32), classes[mem_local].astype(np.int32)


def seen_test_set(test_images, test_labels, seen: Sequence[int]):
  """The test images of the ``seen`` classes with labels mapped to their position in ``seen``."""
  test_labels = np.asarray(test_labels)
  seen = np.asarray(seen)
  mask = np.isin(test_labels, seen)
  lookup = {int(c): i for i, c in enumerate(seen)}
  return np.asarray(test_images)[mask], np.array([lookup[int(c)] for c in test_labels[mask]], np.int32)


def default_learner(config: ContinualConfig, digits: bool = False, mesh=None) -> Callable:
  """``learn(images, labels, key, num_classes, test_x, test_y) -> EvalResult``: ``eval_models`` fresh
  ``eval_arch`` networks trained from scratch with :func:`jaxdistill.evaluate.evaluate`."""
  dsa = default_params(digits=digits) if config.eval_dsa else None
  kwargs = {"width": config.eval_width} if config.eval_arch in ("convnet", "convnet_bn", "mlp") else {}

  def learn(images, labels, key, num_classes, test_x, test_y) -> EvalResult:
    return evaluate(images, labels, config.eval_arch, key, config.eval_models, config.eval_epochs,
                    test_images=test_x, test_labels=test_y, num_classes=num_classes, dsa=dsa,
                    model_kwargs=kwargs, progress=False, mesh=mesh)
  return learn


def run_continual(seed: int, train_images, train_labels, test_images, test_labels, num_classes: int,
                  config: ContinualConfig, *, digits: bool = False, learner: Optional[Callable] = None,
                  mesh=None, progress: bool = False, log: Optional[Callable[[str], None]] = None
                  ) -> ContinualResult:
  """Runs the class-incremental stream once (see module docstring).

  Args:
    seed: class order (:func:`class_order`) and all randomness (``PRNGKey(seed)``).
    train_images, train_labels: ``[N, H, W, C]`` normalised images, int ``[N]``; test_* likewise.
    learner: ``(images, labels, key, num_classes, test_x, test_y) -> EvalResult`` trained on the memory
      with labels in ``0..seen-1``; default :func:`default_learner`.

  Raises:
    ValueError: ``num_steps · classes_per_step`` exceeds ``num_classes``.
  """
  config.validate()
  if config.num_steps * config.classes_per_step > num_classes:
    raise ValueError(f"num_steps * classes_per_step = {config.num_steps * config.classes_per_step} exceeds "
                     f"the {num_classes} classes.")
  learner = learner or default_learner(config, digits, mesh)
  order = class_order(seed, num_classes)
  key = jax.random.PRNGKey(seed)
  mem_x, mem_y, steps = [], [], []
  for t in range(config.num_steps):
    new = step_classes(order, t, config.classes_per_step)
    k_cond, k_learn = jax.random.split(jax.random.fold_in(key, t))
    t0 = time.perf_counter()
    x, y = condense(k_cond, train_images, train_labels, new, config, digits=digits, progress=progress)
    cond_s = time.perf_counter() - t0
    mem_x.append(x)
    mem_y.append(y)
    seen = order[:(t + 1) * config.classes_per_step]
    memory_x, memory_y = np.concatenate(mem_x), np.concatenate(mem_y)
    lookup = {int(c): i for i, c in enumerate(seen)}
    train_y = np.array([lookup[int(c)] for c in memory_y], np.int32)
    tx, ty = seen_test_set(test_images, test_labels, seen)
    t0 = time.perf_counter()
    res = learner(memory_x, train_y, k_learn, len(seen), tx, ty)
    steps.append(StepResult(t, [int(c) for c in new], [int(c) for c in seen], len(memory_y), len(ty),
                            np.asarray(res.accuracies), float(res.mean), float(res.std), cond_s,
                            time.perf_counter() - t0))
    if log is not None:
      log(f"{config.method} seed {seed} step {t}: classes {list(map(int, new))}, memory {len(memory_y)}, "
          f"accuracy {100 * res.mean:.2f} ± {100 * res.std:.2f} %")
  return ContinualResult(config.method, seed, order, steps, np.concatenate(mem_x), np.concatenate(mem_y))


def summarize(results: Sequence[ContinualResult]) -> Dict:
  """Mean ± std over runs (seeds) of each step's mean accuracy: ``{"mean": [steps], "std": [steps],
  "per_seed": [[steps]], "seeds": [...], "memory_sizes": [steps]}`` (accuracies as fractions)."""
  if not results:
    raise ValueError("summarize needs at least one result.")
  acc = np.array([[s.mean for s in r.steps] for r in results])
  return {"method": results[0].method, "seeds": [r.seed for r in results], "mean": acc.mean(0).tolist(),
          "std": acc.std(0).tolist(), "per_seed": acc.tolist(),
          "memory_sizes": [s.memory_size for s in results[0].steps]}


def save_plot(path: str, summaries: Dict[str, Dict], title: str = "") -> str:
  """Accuracy (%) over seen classes after each step, mean ± std over seeds, one line per method."""
  fig, ax = io.new_figure((6, 4))
  for name, s in summaries.items():
    steps = np.arange(1, len(s["mean"]) + 1)
    ax.errorbar(steps, 100 * np.asarray(s["mean"]), yerr=100 * np.asarray(s["std"]), capsize=3, marker="o",
                label=f"{name} (n={len(s['seeds'])})")
  ax.set_xlabel("step")
  ax.set_ylabel("test accuracy on seen classes (%)")
  ax.set_xticks(np.arange(1, len(next(iter(summaries.values()))["mean"]) + 1))
  if title:
    ax.set_title(title, fontsize=10)
  ax.legend()
  fig.tight_layout()
  return io.save_figure(path, fig)


__all__ = ["ContinualConfig", "ContinualResult", "METHODS", "StepResult", "class_order", "condense",
           "default_learner", "run_continual", "save_plot", "seen_test_set", "step_classes", "summarize"]
