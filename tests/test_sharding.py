"""Multi-device sharding (jaxdistill.sharding): the sharded distillation step (DM, DC), sharded evaluation
and sharded expert training equal the single-device path on 4 simulated CPU devices; the multi-host code
path (jax.distributed) runs with a one-process local coordinator; flag / mesh validation."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: XLA_FLAGS must be set before JAX starts.
_EQUALITY_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxdistill import data, loop, objectives, sharding, synthetic
    from jaxdistill.augment import default_params
    from jaxdistill.evaluate import EvalConfig, test_accuracies, train_models
    from jaxdistill import models

    assert jax.device_count() == 4, jax.devices()
    x, y, spec = data.load("fashion_mnist", "train[:400]")
    tx, ty, _ = data.load("fashion_mnist", "test[:200]")
    nc = spec.num_classes
    mesh = sharding.make_mesh()
    out = {"devices": jax.device_count()}
    parts = sys.argv[1].split(",")
    key = jax.random.PRNGKey(0)
    for method, over in (("dm", {}), ("dc", {"outer_loop": 1, "inner_loop": 1})):
      if method not in parts:
        continue
      cfg = objectives.default_config(method, width=8, **over)
      obj = objectives.make_objective(method, cfg, num_classes=nc, image_shape=x.shape[1:], ipc=2)
      syn = synthetic.init_pixels(key, "real", x, y, nc, 2)
      lc = loop.LoopConfig(iterations=2, real_per_class=8, lr_img=objectives.method_defaults(method).lr_img)
      one = loop.distill(obj, synthetic.PIXELS, syn, x, y, nc, key, lc, progress=False)
      many = loop.distill(obj, synthetic.PIXELS, syn, x, y, nc, key, lc, progress=False, mesh=mesh)
      a = np.asarray(one.state.syn.params["images"]); b = np.asarray(many.state.syn.params["images"])
      out[method] = {"max_image_diff": float(np.max(np.abs(a - b))),
                     "moved": float(np.max(np.abs(a - np.asarray(syn.params["images"])))),
                     "losses_one": one.losses.tolist(), "losses_many": many.losses.tolist(),
                     "state_devices": len(many.state.syn.params["images"].sharding.device_set)}
    # The annotation really splits the real batch: [C=10, n=8] over 4 devices -> along n.
    real = objectives.RealBatch(jnp.zeros((10, 8, 28, 28, 1)), jnp.zeros((10, 8), jnp.int32))
    # Checked on the result's sharding (not on lowered text, whose syntax differs across JAX versions).
    split = jax.jit(lambda r: sharding.constrain_real_batch(r, mesh))(real)
    out["split_shard_shape"] = list(split.images.sharding.shard_shape(split.images.shape))
    out["split_label_shard_shape"] = list(split.labels.sharding.shard_shape(split.labels.shape))
    if "eval" in parts:  # evaluation: 4 models split over 4 devices vs one device
      dsa = default_params(digits=spec.digits)
      sub = x[:40]; suby = y[:40]
      k = jax.random.PRNGKey(3)
      model = models.get_model("convnet", nc, x.shape[1:], width=8)
      v1 = train_models(sub, suby, model, k, 4, EvalConfig(epochs=2), dsa, progress=False)
      v4 = train_models(sub, suby, model, k, 4, EvalConfig(epochs=2), dsa, progress=False, mesh=mesh)
      out["eval_one"] = test_accuracies(model, v1, tx, ty).tolist()
      out["eval_many"] = test_accuracies(model, v4, tx, ty).tolist()
      diffs = jax.tree_util.tree_map(lambda p, q: float(jnp.max(jnp.abs(p - q))), v1, v4)
      out["eval_param_diff"] = max(jax.tree_util.tree_leaves(diffs))
      out["eval_devices"] = len(jax.tree_util.tree_leaves(v4)[0].sharding.device_set)
    if "experts" in parts:  # expert training (MTT buffers): a shard of 4 experts over 4 devices vs one
      import os, tempfile
      from jaxdistill import experts, io
      ecfg = experts.ExpertConfig(width=8, num_experts=4, experts_per_shard=4, epochs=1, batch_size=64,
                                  dsa=False)
      tmp = tempfile.mkdtemp()
      for name, m in (("one", None), ("many", mesh)):
        experts.train_experts(ecfg, x[:128], y[:128], tx, ty, nc, os.path.join(tmp, name),
                              dataset="fashion_mnist", progress=False, mesh=m)
      e1, _ = io.load_npz(os.path.join(tmp, "one", experts.shard_file(0)))
      e4, _ = io.load_npz(os.path.join(tmp, "many", experts.shard_file(0)))
      out["expert_diff"] = float(np.max(np.abs(e1["epoch_0001"] - e4["epoch_0001"])))
      out["expert_moved"] = float(np.max(np.abs(e1["epoch_0001"] - e1["epoch_0000"])))
    # 6 models on 4 devices -> a 3-device sub-mesh.
    out["model_mesh_6"] = sharding.mesh_size(sharding.model_mesh(mesh, 6))
    print("RESULT " + json.dumps(out))
""")

_DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json, sys
    from experiments import common
    args = common.add_common_args(__import__("argparse").ArgumentParser(), ipc_required=False).parse_args(
        ["--out", "unused", "--distributed", "--coordinator-address", sys.argv[1], "--num-processes", "1",
         "--process-id", "0", "--devices", "all"])
    mesh = common.setup_devices(args)
    import jax, jax.numpy as jnp, numpy as np
    from jaxdistill import sharding
    x = sharding.shard_leading(jnp.arange(8.0), mesh)
    total = float(jax.jit(lambda v: jnp.sum(v * 2.0))(x))
    print("RESULT " + json.dumps({"process_count": jax.process_count(), "devices": jax.device_count(),
                                  "mesh": sharding.mesh_size(mesh), "total": total}))
    jax.distributed.shutdown()
""")


def _run(script, *argv, devices=4, timeout=1200):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAXDISTILL_PROGRESS="0",
             PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", script, *argv], cwd=str(REPO), env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def _check_distill(r):
  assert r["moved"] > 1e-4  # the images were actually updated
  assert r["max_image_diff"] < 1e-4, r
  assert r["losses_one"] == pytest.approx(r["losses_many"], rel=1e-4, abs=1e-6)
  assert r["state_devices"] == 4


def test_sharded_dm_step_equals_single_device(data_dir):
  out = _run(_EQUALITY_SCRIPT, "dm")
  assert out["devices"] == 4
  _check_distill(out["dm"])
  assert out["split_shard_shape"] == [10, 2, 28, 28, 1]
  assert out["split_label_shard_shape"] == [10, 2]
  assert out["model_mesh_6"] == 3


@pytest.mark.slow
def test_sharded_dc_evaluate_and_experts_equal_single_device(data_dir):
  out = _run(_EQUALITY_SCRIPT, "dc,eval,experts")
  _check_distill(out["dc"])
  assert out["eval_one"] == pytest.approx(out["eval_many"], abs=1e-6)
  assert out["eval_param_diff"] < 1e-4
  assert out["eval_devices"] == 4
  assert out["expert_moved"] > 1e-4 and out["expert_diff"] < 1e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_flag_initialises_one_process_job():
  out = _run(_DISTRIBUTED_SCRIPT, f"localhost:{_free_port()}", devices=2, timeout=600)
  assert out == {"process_count": 1, "devices": 2, "mesh": 2, "total": 56.0}


def test_mesh_helpers_validate():
  import jax
  import jax.numpy as jnp

  from jaxdistill import sharding

  assert sharding.mesh_from_flag("1") is None and sharding.mesh_from_flag(None) is None
  assert sharding.mesh_size(sharding.mesh_from_flag("all")) == jax.device_count()
  with pytest.raises(ValueError, match="--devices"):
    sharding.mesh_from_flag("lots")
  with pytest.raises(ValueError, match="devices must be between"):
    sharding.make_mesh(jax.device_count() + 1)
  mesh = sharding.make_mesh(1)
  assert sharding.real_batch_spec((10, 8, 28, 28, 1), mesh) == jax.sharding.PartitionSpec(
      None, "data", None, None, None)
  with pytest.raises(ValueError, match="together"):
    sharding.initialize_distributed(coordinator_address="localhost:1")
  assert sharding.cluster_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                    "JAX_PROCESS_ID": "1"}) == {
      "coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  x = sharding.shard_leading(jnp.arange(4.0), mesh)
  assert x.sharding.spec == jax.sharding.PartitionSpec("data")
