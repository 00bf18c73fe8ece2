"""Applications: class-incremental learning with a condensed memory (jaxdistill.apps.continual) and the NAS
proxy (jaxdistill.apps.nas), plus their CLIs on tiny settings."""
import time

import jax
import numpy as np
import pytest

from jaxdistill.apps import continual, nas
from jaxdistill.evaluate import EvalResult


def test_class_order_from_seed():
  a, b, c = continual.class_order(0, 10), continual.class_order(0, 10), continual.class_order(1, 10)
  np.testing.assert_array_equal(a, b)
  assert sorted(a.tolist()) == list(range(10)) and a.tolist() != c.tolist()
  parts = [continual.step_classes(a, t, 2) for t in range(5)]
  np.testing.assert_array_equal(np.concatenate(parts), a)
  with pytest.raises(ValueError, match="step"):
    continual.step_classes(a, 5, 2)
  with pytest.raises(ValueError, match="method"):
    continual.ContinualConfig(method="replay").validate()


def _nearest_mean_learner(calls):
  """A real (cheap) learner: nearest class mean in pixel space, recording what it was given."""
  def learn(images, labels, key, num_classes, test_x, test_y):
    calls.append({"n": len(labels), "labels": np.unique(labels), "num_classes": num_classes,
                  "test_labels": np.unique(test_y), "test_n": len(test_y)})
    means = np.stack([images[labels == c].reshape(-1, images[0].size).mean(0) for c in range(num_classes)])
    d = ((test_x.reshape(len(test_x), -1)[:, None, :] - means[None]) ** 2).sum(-1)
    acc = float(np.mean(d.argmin(1) == test_y))
    return EvalResult(np.array([acc]), acc, 0.0, 0.0, "nearest-mean", 0)
  return learn


def test_continual_memory_sizes_and_seen_classes_only(fmnist_train, fmnist_test):
  x, y, spec = fmnist_train
  tx, ty, _ = fmnist_test
  tx, ty = tx[:1000], ty[:1000]
  cfg = continual.ContinualConfig(method="random", memory_per_class=3)
  calls = []
  res = continual.run_continual(4, x, y, tx, ty, spec.num_classes, cfg, learner=_nearest_mean_learner(calls))
  order = continual.class_order(4, 10)
  np.testing.assert_array_equal(res.order, order)
  assert [s.memory_size for s in res.steps] == [6, 12, 18, 24, 30]
  for t, (s, call) in enumerate(zip(res.steps, calls)):
    seen = order[:2 * (t + 1)]
    assert s.new_classes == order[2 * t:2 * t + 2].tolist() and s.seen_classes == seen.tolist()
    # the learner sees only the seen classes, relabelled 0..seen-1, and is tested on their test images only
    assert call["num_classes"] == len(seen) and call["labels"].tolist() == list(range(len(seen)))
    assert call["test_labels"].tolist() == list(range(len(seen)))
    assert call["test_n"] == s.test_size == int(np.isin(ty, seen).sum())
    assert s.test_size < len(ty) or t == 4
    assert 0.0 <= s.mean <= 1.0
  assert s.test_size == len(ty)
  # the memory: k real training images of every class, in class order of arrival
  np.testing.assert_array_equal(res.memory_y, np.repeat(order, 3))
  flat = x.reshape(len(x), -1)
  for img, lab in zip(res.memory_x, res.memory_y):
    hit = np.flatnonzero(np.all(flat == img.reshape(-1), axis=1))
    assert len(hit) and np.all(y[hit] == lab)
  summary = continual.summarize([res, res])
  assert summary["memory_sizes"] == [6, 12, 18, 24, 30] and summary["std"] == [0.0] * 5
  assert summary["mean"] == pytest.approx([s.mean for s in res.steps])


def test_condense_dm_restricted_to_step_classes(fmnist_train):
  x, y, _ = fmnist_train
  cfg = continual.ContinualConfig(method="dm", memory_per_class=2, dm_iterations=2, dm_real_per_class=4,
                                  dm_width=8)
  mem_x, mem_y = continual.condense(jax.random.PRNGKey(0), x, y, [7, 2], cfg)
  assert mem_x.shape == (4, 28, 28, 1) and mem_y.tolist() == [7, 7, 2, 2]
  # initialised from real images of the right class, then moved by the DM updates
  flat = x.reshape(len(x), -1)
  for img, lab in zip(mem_x, mem_y):
    d = np.abs(flat - img.reshape(-1)).max(1)
    assert d.min() > 1e-4  # no longer an exact real image
    assert y[d.argmin()] == lab


def test_search_space_has_at_least_24_distinct_archs():
  space = nas.search_space((16, 32, 64), (1, 2, 3), ("instancenorm", "batchnorm", "none"),
                           ("relu", "sigmoid", "leakyrelu"), ("avg", "max", "none"))
  assert len(space) == 243 and len({a.name for a in space}) == 243
  picked = nas.sample_architectures(jax.random.PRNGKey(0), space, 24)
  assert len(set(picked)) == 24
  for field in ("width", "depth", "norm", "activation", "pooling"):
    assert len({getattr(a, field) for a in picked}) > 1, field
  from jaxdistill import models
  m = models.get_model("convnet", 10, (28, 28, 1), **picked[0].model_kwargs())
  assert (m.width, m.depth, m.norm, m.activation, m.pooling) == (
      picked[0].width, picked[0].depth, picked[0].norm, picked[0].activation, picked[0].pooling)
  assert len(nas.search_space()) == 720  # the DC paper's space
  with pytest.raises(ValueError, match="norm"):
    nas.Arch(16, 2, "groupish", "relu", "avg").validate()


def test_spearman_matches_reference(rng):
  # closed form without ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
  a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
  assert nas.spearman(a, b) == pytest.approx(1 - 6 * 4 / (5 * 24))
  assert nas.spearman(a, a[::-1]) == pytest.approx(-1.0)
  np.testing.assert_allclose(nas.rankdata([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
  try:
    from scipy import stats
  except ImportError:
    return
  for _ in range(5):
    x = rng.integers(0, 6, 24).astype(float)  # with ties
    z = x + rng.normal(0, 2, 24)
    assert nas.spearman(x, z) == pytest.approx(stats.spearmanr(x, z).statistic, abs=1e-12)


def test_compare_reports_top1_and_rank():
  archs = [nas.Arch(16, d, "none", "relu", "avg") for d in (1, 2, 3, 4)]
  full = nas.ArchScores(np.array([0.5, 0.8, 0.7, 0.6]), np.zeros(4), np.full(4, 2.0))
  proxy = nas.ArchScores(np.array([0.2, 0.3, 0.4, 0.1]), np.zeros(4), np.full(4, 0.5))
  reports = {r.name: r for r in nas.compare(archs, {"p": proxy}, full, {"p": 10.0})}
  assert reports["p"].top1 == archs[2].name and reports["p"].top1_full_rank == 2
  assert reports["p"].top1_full_accuracy == pytest.approx(0.7)
  assert reports["p"].seconds == pytest.approx(12.0)
  assert reports["p"].spearman == pytest.approx(nas.spearman(proxy.accuracies, full.accuracies))
  assert reports["full"].spearman == pytest.approx(1.0) and reports["full"].top1_full_rank == 1
  assert "| p |" in nas.report_table(list(reports.values()))


@pytest.mark.slow
def test_continual_cli_tiny(tmp_path):
  from experiments import continual as cli
  from jaxdistill import io

  out = tmp_path / "cl"
  payload = cli.main(["--methods", "dm,random", "--seeds", "3", "--num-steps", "1", "--ipc", "2",
                      "--dm-iterations", "2", "--dm-width", "8", "--dm-real-per-class", "4", "--train-size", "500",
                      "--eval-models", "1", "--eval-epochs", "2", "--eval-width", "8", "--test-size", "300",
                      "--no-eval-dsa", "--quiet", "--out", str(out)])
  for name in ("results.json", "accuracy.png", "table.md"):
    assert (out / name).stat().st_size > 0
  saved = io.load_json(str(out / "results.json"))
  assert saved["summary"]["dm"]["memory_sizes"] == [4] and len(saved["runs"]["random"]) == 1
  for run in saved["runs"]["dm"]:
    assert run["class_order"] == continual.class_order(run["seed"], 10).tolist()
    for s in run["steps"]:
      assert 0.0 <= s["mean"] <= 1.0 and s["test_size"] < 300
  assert payload["summary"]["random"]["seeds"] == [3] and payload["summary"]["dm"]["std"] == [0.0]


@pytest.mark.slow
def test_nas_cli_tiny(tmp_path):
  from experiments import nas as cli

  t0 = time.perf_counter()
  payload = cli.main(["--num-archs", "2", "--widths", "8", "--depths", "1,2", "--norms", "none,instancenorm",
                      "--activations", "relu", "--poolings", "avg", "--ipc", "2", "--proxy-epochs", "2",
                      "--early-epochs", "1", "--full-size", "300", "--full-epochs", "1", "--val-size", "200",
                      "--no-eval-dsa", "--quiet", "--out", str(tmp_path / "nas")])
  assert len(set(payload["architectures"])) == 2
  reports = {r["name"]: r for r in payload["reports"]}
  assert set(reports) == {"random", "early", "full"} and reports["full"]["spearman"] == pytest.approx(1.0)
  for r in reports.values():
    assert r["top1"] in payload["architectures"] and 0 < r["seconds"] < time.perf_counter() - t0
  assert (tmp_path / "nas" / "scatter.png").stat().st_size > 0
