"""FTD, IT-GAN, KFS and GTN through the method registry and ``experiments.distill`` (jaxdistill/methods/
more_methods.py): each runs end to end on a tiny setting and writes ``synthetic.npz`` + ``metrics.json`` holding
what the method promises (FTD: the EMA set and the buffer's flatness; IT-GAN: the prior and the regulariser; KFS:
storage within the pixel budget; GTN: IPC generated images per class and where their noise comes from)."""
import json
import warnings

import numpy as np
import pytest

from jaxdistill import evaluate, experts, io, methods, presets
from jaxdistill.methods import more_methods

NC = 10
TINY = ["--ipc", "1", "--real-per-class", "2", "--width", "8", "--eval-models", "1", "--eval-epochs", "1",
        "--eval-width", "8", "--test-size", "100", "--no-eval-dsa", "--quiet", "--iterations", "2"]


def _run(tmp_path, name, argv, tail=()):
  from experiments import distill
  out = tmp_path / name
  payload = distill.main([*argv, *TINY, *tail, "--out", str(out)])
  saved = io.load_synthetic(str(out / "synthetic.npz"))
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["method"] == argv[1] and len(metrics["loss_curve"]) == 2
  assert np.all(np.isfinite(metrics["loss_curve"])) and 0.0 <= metrics["test_accuracy_mean"] <= 1.0
  assert np.all(np.isfinite(saved["images"]))
  return payload, saved, metrics


def test_registered_in_the_catalogue_with_presets():
  assert {"ftd", "itgan", "kfs", "gtn"} <= set(methods.names())
  assert methods.get("ftd").setup is more_methods.ftd
  assert methods.takes_objective("itgan") and methods.takes_objective("kfs")
  assert not methods.takes_objective("gtn") and methods.get("gtn").objective == "gtn"
  for name in ("ftd", "itgan", "kfs", "gtn"):
    assert set(presets.available(name)) == {"cpu", "paper"}, name
  assert evaluate.protocol("ftd") == evaluate.protocol("mtt")._replace(source=evaluate.protocol("ftd").source)


def test_ftd_loop_hook_default_and_flag():
  opts = methods.options("ftd", ipc=1)
  assert methods.loop_settings(opts, {"lr_img": 1.0})["ema_decay"] == more_methods.FTD_EMA_DECAY == 0.9995
  opts = methods.options("ftd", ipc=1, ema_decay=0.5)
  assert methods.loop_settings(opts, {"lr_img": 1.0})["ema_decay"] == 0.5


def test_kfs_codes_fit_the_budget():
  from jaxdistill import synthetic
  from jaxdistill.synthetic import kfs
  cfg = kfs.KFSConfig()
  for ipc in (1, 2, 10):
    n = more_methods.max_codes(cfg, NC, ipc, (28, 28, 1))
    budget = synthetic.storage_budget(NC, ipc, (28, 28, 1))
    fits = lambda k: kfs.storage_floats(kfs.KFSConfig(codes_per_class=k), NC, (28, 28, 1)) <= budget
    assert fits(n) and not fits(n + 1), ipc
  assert more_methods.max_codes(cfg, NC, 1, (28, 28, 1)) == 3  # docs/kfs_gtn.md: 3 codes per class at IPC 1


def test_gtn_config_makes_ipc_images_per_class():
  from jaxdistill.synthetic import gtn
  cfg = more_methods.gtn_config(gtn.GTNConfig(batch_per_class=2), 10)
  assert gtn.images_per_class(cfg) == 10 and cfg.inner_steps == 5
  with pytest.raises(ValueError, match="batch_per_class"):
    more_methods.gtn_config(gtn.GTNConfig(batch_per_class=3), 10)


@pytest.fixture(scope="module")
def buffers(fmnist_train, tmp_path_factory):
  """Two tiny MLP-8 buffers on 200 images: flat (sam_rho 0.01, FTD's) and plain."""
  x, y, _ = fmnist_train
  out = {}
  for name, rho in (("flat", 0.01), ("plain", 0.0)):
    path = str(tmp_path_factory.mktemp(name))
    cfg = experts.ExpertConfig(arch="mlp", width=8, num_experts=2, experts_per_shard=2, epochs=2, batch_size=100,
                               dsa=False, sam_rho=rho)
    experts.train_experts(cfg, x[:200], y[:200], x[1000:1100], y[1000:1100], NC, path, dataset="fashion_mnist",
                          progress=False)
    out[name] = path
  return out


@pytest.mark.slow
def test_ftd_cli_saves_and_evaluates_the_ema_set(buffers, tmp_path, data_dir, monkeypatch):
  from jaxdistill import loop
  cfg = tmp_path / "cfg.json"
  cfg.write_text(json.dumps({"arch": "mlp"}))
  argv = ["--method", "ftd", "--buffer", buffers["flat"], "--config", str(cfg), "--eval-arch", "mlp",
          "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1", "--lr-img", "10",
          "--ema-decay", "0.5", "--data-dir", data_dir]
  seen = {}
  real_distill = loop.distill

  def spy(*args, **kwargs):
    result = real_distill(*args, **kwargs)
    seen["result"] = result
    return result
  monkeypatch.setattr(loop, "distill", spy)
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # a flat buffer: no warning
    payload, saved, metrics = _run(tmp_path, "ftd", argv)
  result = seen["result"]
  assert metrics["loop_config"]["ema_decay"] == 0.5 and metrics["buffer_flat"] and metrics["buffer_sam_rho"] == 0.01
  assert "ema" in metrics["synthetic_set"] and metrics["eval_learned_lr"] is True
  ema = np.asarray(result.ema.params["images"])
  np.testing.assert_allclose(saved["images"], ema, rtol=1e-6)  # the EMA set is saved ...
  assert not np.allclose(ema, np.asarray(result.state.syn.params["images"]))  # ... not the last iterate
  np.testing.assert_allclose(float(saved["lr"]), float(result.ema.params["lr"]), rtol=1e-6)
  with pytest.warns(UserWarning, match="sam_rho 0"):  # plain experts: FTD warns and records it
    _, _, plain = _run(tmp_path, "ftd_plain", ["--method", "ftd", *argv[2:3], buffers["plain"], *argv[4:]])
  assert plain["buffer_flat"] is False and plain["buffer_sam_rho"] == 0.0
  assert plain["loop_config"]["ema_decay"] == 0.5


@pytest.mark.slow
def test_itgan_cli(tmp_path, data_dir):
  argv = ["--method", "itgan", "--objective", "dm", "--itgan-width", "8", "--itgan-inversion-steps", "3",
          "--data-dir", data_dir]
  payload, saved, metrics = _run(tmp_path, "itgan", argv)
  assert metrics["parameterisation"] == "itgan" and metrics["objective"] == "dm"
  assert metrics["parameterisation_config"]["inversion_steps"] == 3
  assert metrics["parameterisation_config"]["width"] == 8 and "trained prior" in metrics["generator_source"]
  assert saved["images"].shape == (NC, 28, 28, 1)
  assert saved["codes"].shape[0] == NC  # the latents, one per image


@pytest.mark.slow
def test_kfs_cli_within_budget(tmp_path, data_dir):
  argv = ["--method", "kfs", "--objective", "dm", "--kfs-decoders", "2", "--data-dir", data_dir]
  payload, saved, metrics = _run(tmp_path, "kfs", argv)
  budget = 10 * 28 * 28
  assert metrics["storage_budget_floats"] == budget and metrics["within_budget"]
  assert metrics["kfs_storage_floats"] <= budget and metrics["storage_floats"] <= budget
  codes = metrics["parameterisation_config"]["codes_per_class"]
  assert codes == more_methods.max_codes(more_methods.kfs_lib.KFSConfig(decoders=2), NC, 1, (28, 28, 1))
  assert saved["images"].shape == (NC * codes * 2, 28, 28, 1) == (NC * metrics["images_per_class"], 28, 28, 1)
  assert metrics["loop_config"]["param_lrs"]["decoders"] == more_methods.KFS_DECODER_LR


@pytest.mark.slow
def test_gtn_cli_renders_ipc_images_per_class(tmp_path, data_dir):
  payload, saved, metrics = _run(tmp_path, "gtn", ["--method", "gtn", "--data-dir", data_dir], tail=["--ipc", "2"])
  assert metrics["gtn_eval_images_per_class"] == 2 and metrics["gtn_inner_steps"] == 2
  assert "learned curriculum z" in metrics["gtn_eval_set"] and metrics["loop_config"]["optimizer"] == "adam"
  assert saved["images"].shape == (NC * 2, 28, 28, 1)
  np.testing.assert_array_equal(np.asarray(saved["labels"]), np.repeat(np.arange(NC), 2))  # class-major
  assert saved["z"].shape == (NC, 2, 32)  # the learned curriculum that rendered them
  from experiments import distill
  with pytest.raises(ValueError, match="--method gtn"):
    distill.main(["--method", "glad", "--objective", "gtn", *TINY, "--data-dir", data_dir,
                  "--out", str(tmp_path / "bad")])
