"""``experiments.distill --method idc | dcc | cafe`` on tiny runs (the registry's set-ups in
jaxdistill/methods/matching_variants.py): outputs, IDC's stored vs rendered set and lr, CAFE's probe."""
import json

import numpy as np
import pytest

from experiments import distill
from jaxdistill import data as data_lib
from jaxdistill import evaluate, io, methods
from jaxdistill.methods import matching_variants as mv
from jaxdistill.objectives import gradient_matching as gm

TINY = ["--ipc", "1", "--real-per-class", "4", "--width", "8", "--eval-models", "1", "--eval-epochs", "1",
        "--eval-width", "8", "--test-size", "100", "--quiet"]


def _run(tmp_path, method, config, *extra, iterations=2):
  cfg = tmp_path / f"{method}.json"
  cfg.write_text(json.dumps(config))
  out = tmp_path / method
  metrics = distill.main(["--method", method, "--iterations", str(iterations), "--out", str(out), "--config",
                          str(cfg), *TINY, *extra])
  for name in ("synthetic.npz", "metrics.json"):
    assert (out / name).stat().st_size > 0, name
  return metrics, io.load_synthetic(str(out / "synthetic.npz")), io.load_json(str(out / "metrics.json"))


@pytest.mark.slow
def test_idc_stores_ipc_images_and_evaluates_the_rendered_set(tmp_path, monkeypatch):
  seen = []
  original = distill.common.evaluate_set

  def spy(args, data, images, labels, key, **kw):
    seen.append((np.asarray(images).shape, np.asarray(labels)))
    return original(args, data, images, labels, key, **kw)

  monkeypatch.setattr(distill.common, "evaluate_set", spy)
  # 2 outer iterations of 2 image updates; the matching net trains on 64 real images in batches of 32.
  _, syn, metrics = _run(tmp_path, "idc", {"outer_loop": 2, "real_train_size": 64, "batch_train": 32})
  assert syn["stored_images"].shape == (10, 28, 28, 1)  # ipc 1 per class: the storage of a 1-IPC pixel set
  np.testing.assert_array_equal(syn["stored_labels"], np.arange(10))
  assert syn["images"].shape == (40, 28, 28, 1)  # factor 2: 4 rendered images per stored one
  np.testing.assert_array_equal(syn["labels"], np.repeat(np.arange(10), 4))
  # The rendered set is the decoding of the stored one (stored image s -> rendered s*4 ... s*4+3).
  np.testing.assert_allclose(syn["images"], np.asarray(gm_decode(syn["stored_images"])), atol=1e-5)
  assert seen and seen[-1][0] == (40, 28, 28, 1)  # the final evaluation trained on the rendered set
  np.testing.assert_array_equal(seen[-1][1], np.repeat(np.arange(10), 4))
  assert metrics["storage_floats"] == 10 * 28 * 28 and metrics["parameterisation"] == "multi_formation2"
  assert metrics["parameterisation_config"]["factor"] == 2 and metrics["init"] == "mix"
  assert metrics["image_updates"] == 4 and len(metrics["loss_curve"]) == 4
  assert np.all(np.isfinite(metrics["loss_curve"]))
  spec = data_lib.get_spec("fashion_mnist")  # IDC's lr for Fashion-MNIST at IPC 1 (1e-4 at IPC 10, size base 32)
  expected = gm.idc_image_lr(1e-4, 1, 28, spec.std)
  assert metrics["loop_config"]["lr_img"] == pytest.approx(expected)
  assert metrics["eval_epochs"] == 1 and metrics["eval_protocol"] == "idc"


def gm_decode(stored):
  from jaxdistill.synthetic.multi_formation import decode
  return decode(stored, 2)


@pytest.mark.slow
def test_idc_factor_flag_and_lr_flag_win(tmp_path):
  _, syn, metrics = _run(tmp_path, "idc", {"outer_loop": 1, "real_train_size": 32, "batch_train": 32},
                         "--factor", "1", "--init", "real", "--lr-img", "0.003", iterations=1)
  assert syn["images"].shape == syn["stored_images"].shape == (10, 28, 28, 1)  # IDC-I
  np.testing.assert_allclose(syn["images"], syn["stored_images"])
  assert metrics["loop_config"]["lr_img"] == 0.003 and metrics["parameterisation"] == "multi_formation1"


def test_idc_lr_scales_with_ipc_and_dataset():
  fm, mnist, cifar = (data_lib.get_spec(n) for n in ("fashion_mnist", "mnist", "cifar10"))
  assert mv.idc_lr("fashion_mnist", 10, 28, fm.std) == pytest.approx(1e-4 * (28 / 32) ** 2 / np.mean(np.square(fm.std)))
  assert mv.idc_lr("fashion_mnist", 20, 28, fm.std) == pytest.approx(2 * mv.idc_lr("fashion_mnist", 10, 28, fm.std))
  assert mv.idc_lr("mnist", 10, 28, mnist.std) == pytest.approx(1e-4 / np.mean(np.square(mnist.std)))
  assert mv.idc_lr("cifar10", 10, 32, cifar.std) == pytest.approx(5e-3 / np.mean(np.square(cifar.std)))
  opts = methods.options("idc", ipc=10, dataset="fashion_mnist")
  assert methods.loop_settings(opts, {"lr_img": 1.0})["lr_img"] == pytest.approx(mv.idc_lr("fashion_mnist", 10, 28,
                                                                                             fm.std))


@pytest.mark.slow
def test_dcc_runs_with_its_loops(tmp_path):
  # DCC's loops at IPC 1: 10 image updates per network, 5 epochs between (DC: 1 / 1).
  _, syn, metrics = _run(tmp_path, "dcc", {})
  assert syn["images"].shape == (10, 28, 28, 1)
  assert metrics["image_updates_per_iteration"] == 10 and len(metrics["loss_curve"]) == 20
  assert metrics["objective_config"]["class_collaborative"] and np.all(np.isfinite(metrics["loss_curve"]))
  assert metrics["eval_protocol"] == "dcc" and metrics["init"] == "real"


def test_cafe_runs_with_the_dynamic_schedule_and_a_probe(tmp_path):
  _, syn, metrics = _run(tmp_path, "cafe", {"probe_per_class": 8, "max_inner_epochs": 2, "window": 2,
                                            "batch_train": 16}, iterations=3)
  assert syn["images"].shape == (10, 28, 28, 1)
  assert metrics["objective_config"]["schedule"] == "dynamic"
  assert metrics["cafe_probe_per_class"] == mv.CAFE_PROBE_POOL  # Fashion-MNIST has 6000 images per class
  assert len(metrics["loss_curve"]) == 3 and np.all(np.isfinite(metrics["loss_curve"]))
  assert metrics["eval_protocol"] == "cafe"


def test_cafe_probe_is_class_major_real_images(fmnist_train):
  import types

  import jax
  from jaxdistill import objectives

  x, y, spec = fmnist_train
  x, y = np.asarray(x)[:300], np.asarray(y)[:300]
  data = types.SimpleNamespace(train_x=x, train_y=y, test_x=x[:10], test_y=y[:10], spec=spec)
  obj_cfg = objectives.default_config("cafe", width=8)
  built = methods.setup(methods.options("cafe", ipc=1), data, obj_cfg, "noise", jax.random.PRNGKey(0))
  smallest = int(np.min(np.bincount(y, minlength=10)))
  probe = np.asarray(built.objective.data)
  assert probe.shape == (10, min(smallest, mv.CAFE_PROBE_POOL)) + spec.image_shape
  for c in range(10):  # every probe image of row c is a distinct training image of class c
    flat = probe[c].reshape(len(probe[c]), -1)
    hits = [np.flatnonzero(np.all(x.reshape(len(x), -1) == row, axis=1)) for row in flat]
    assert all(len(h) and np.all(y[h] == c) for h in hits), c
    assert len({int(h[0]) for h in hits}) == len(hits)
  fixed = objectives.default_config("cafe", width=8, schedule="fixed")  # no probe for the fixed schedule
  assert methods.setup(methods.options("cafe", ipc=1), data, fixed, "noise", jax.random.PRNGKey(0)).objective.data \
      is None


def test_protocols_of_the_variants():
  assert evaluate.protocol("idc")[:2] == (1000, True)
  assert evaluate.protocol("dcc")[:2] == (300, False)
  assert evaluate.protocol("cafe")[:2] == (600, False)
