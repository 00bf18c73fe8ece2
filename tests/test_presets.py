"""Presets (jaxdistill/presets/*.json): files load, keys are accepted, every value has a source, resolution picks
the most specific entry, the published values are the papers', and the CLI's --preset / --list-presets."""
import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest

from jaxdistill import io, loop, objectives, presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(presets.PRESET_DIR, "*.json")))
# The objectives the paper presets of the parameterisation methods are written for (their cpu presets: dm).
PAPER_OBJECTIVES = {"glad": ("dm", "dc", "mtt"), "gendm": ("dm",), "latentdd": ("dm",), "haba": ("mtt",),
                    "itgan": ("dm",), "kfs": ("dm",)}


def _cli_methods():
  from experiments import distill
  return distill.method_choices()


def test_every_file_loads_and_every_key_is_accepted():
  assert FILES, "no preset files"
  presets.validate()  # raises on unknown keys, datasets, objectives or bad evaluation values
  for path in FILES:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    assert data["note"], path
    for name, entries in data["presets"].items():
      for entry in entries:
        for method in entry.get("methods", data["methods"]):
          accepted = presets.accepted_keys(method, entry.get("objective"))
          assert set(entry["options"]) <= accepted, (path, name, set(entry["options"]) - accepted)


def test_every_value_has_a_non_empty_source():
  count = 0
  for path in FILES:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    for entries in data["presets"].values():
      for entry in entries:
        for key, spec in entry["options"].items():
          assert set(spec) == {"value", "source"}, (path, key)
          assert isinstance(spec["source"], str) and len(spec["source"].strip()) > 10, (path, key)
          count += 1
  assert count > 100


def test_every_cli_method_has_a_paper_and_a_cpu_preset_or_says_why():
  for method in _cli_methods():
    names = presets.available(method)
    assert "paper" in names, method
    if method != "latentdd":  # LatentDD is not benchmarked (its file's note says so)
      assert "cpu" in names, method
  assert "LatentDD is not benchmarked" in presets.note("latentdd")


def _objective_for(method, name):
  if method not in presets.PARAMETERISATION_OPTIONS:
    return [None]
  return ["dm"] if name == "cpu" else list(PAPER_OBJECTIVES[method])


@pytest.mark.parametrize("name", ["paper", "cpu"])
@pytest.mark.parametrize("dataset", ["fashion_mnist", "mnist", "cifar10", "cifar100"])
def test_presets_build_valid_configs(name, dataset):
  """Every method's preset resolves for IPC 1 / 10 / 50 and its values make valid objective and loop configs."""
  loop_fields = {f.name for f in dataclasses.fields(loop.LoopConfig)}
  for method in _cli_methods():
    if name not in presets.available(method):
      continue
    for objective in _objective_for(method, name):
      for ipc in (1, 10, 50):
        values = presets.resolve(method, name, dataset, ipc, objective=objective).values
        config_method = objective or method
        fields = {f.name for f in dataclasses.fields(objectives.default_config(config_method))}
        obj = {k: v for k, v in values.items() if k in fields}
        cfg = objectives.default_config(config_method, **obj)
        if hasattr(cfg, "batch_per_class") and cfg.batch_per_class:
          assert ipc % cfg.batch_per_class == 0, (method, ipc)
        loop_kw = {k: v for k, v in values.items() if k in loop_fields}
        loop.LoopConfig(**loop_kw).validate()
        for key, kind in presets.EVAL_KEYS.items():
          if key in values:
            assert isinstance(values[key], kind), (method, key)


def test_paper_dc_ipc10_outer_inner_loops_and_iterations():
  p = presets.resolve("dc", "paper", "fashion_mnist", 10)
  assert (p.values["outer_loop"], p.values["inner_loop"]) == (10, 50)
  assert p.values["iterations"] == 1000 and p.values["lr_img"] == 0.1 and p.values["init"] == "noise"
  assert "get_loops" in p.sources["outer_loop"]
  assert (p.values["eval_epochs"], p.values["eval_dsa"]) == (300, False)
  dsa = presets.resolve("dsa", "paper", "fashion_mnist", 50).values
  assert (dsa["outer_loop"], dsa["inner_loop"], dsa["init"], dsa["eval_epochs"]) == (50, 10, "real", 1000)
  assert presets.resolve("dsa", "paper", "cifar100", 50).values["outer_loop"] == 10


def test_paper_mtt_matches_published_cifar10_settings():
  # MTT's CIFAR-10 table (METHODS.md): N 50 / 30 / 30, M 2, T+ 2 / 20 / 40; IPC 1 lr_img 1000, lr_lr 1e-7.
  for method in ("mtt", "tesla", "mtt_l1"):
    got = {ipc: presets.resolve(method, "paper", "fashion_mnist", ipc).values for ipc in (1, 10, 50)}
    assert [got[i]["syn_steps"] for i in (1, 10, 50)] == [50, 30, 30]
    assert [got[i]["expert_epochs"] for i in (1, 10, 50)] == [2, 2, 2]
    assert [got[i]["max_start_epoch"] for i in (1, 10, 50)] == [2, 20, 40]
    assert got[1]["lr_img"] == 1000.0 and got[1]["lr_lr"] == 1e-7
    assert all(got[i]["iterations"] == 5000 and got[i]["eval_learned_lr"] for i in (1, 10, 50))
  assert "CIFAR-10" in presets.note("mtt")  # says which dataset's settings stand in for Fashion-MNIST


def test_paper_dm_and_glad_per_objective_lrs():
  assert presets.resolve("dm", "paper", "cifar10", 100).values["lr_img"] == 10.0
  assert presets.resolve("dm", "paper", "cifar100", 100).values["lr_img"] == 1.0  # the dataset entry wins
  assert presets.resolve("dm_l1", "paper", "fashion_mnist", 10).values["iterations"] == 20000
  lrs = {o: presets.resolve("glad", "paper", "fashion_mnist", 10, objective=o).values["lr_features"]
         for o in ("dm", "dc", "mtt")}
  assert lrs == {"dm": 10.0, "dc": 1.0, "mtt": 10000.0}


def _write(tmp_path, monkeypatch, data, fname="toy.json"):
  (tmp_path / fname).write_text(json.dumps(data))
  monkeypatch.setattr(presets, "PRESET_DIR", str(tmp_path))
  presets._files.cache_clear()


@pytest.fixture
def toy(tmp_path, monkeypatch):
  """A hand-made preset file for 'dm' in a temporary preset folder (the real cache is restored after)."""
  def opt(v, s="toy"):
    return {"value": v, "source": s}

  data = {"methods": ["dm"], "note": "toy", "presets": {"paper": [
      {"dataset": "*", "ipc": "*", "options": {"iterations": opt(1), "lr_img": opt(1.0), "width": opt(8)}},
      {"dataset": "*", "ipc": "5-", "options": {"iterations": opt(2), "lr_img": opt(2.0)}},
      {"dataset": "*", "ipc": 10, "options": {"iterations": opt(3)}},
      {"dataset": "mnist", "ipc": "*", "options": {"lr_img": opt(4.0), "width": opt(16, "mnist entry")}},
      {"dataset": ["mnist", "cifar10"], "ipc": 10, "options": {"iterations": opt(5)}},
  ]}}
  _write(tmp_path, monkeypatch, data)
  yield data
  presets._files.cache_clear()


def test_resolve_picks_the_most_specific_entry(toy):
  assert presets.resolve("dm", "paper", "fashion_mnist", 1).values == {"iterations": 1, "lr_img": 1.0, "width": 8}
  assert presets.resolve("dm", "paper", "fashion_mnist", 7).values["iterations"] == 2  # range beats "*"
  assert presets.resolve("dm", "paper", "fashion_mnist", 10).values["iterations"] == 3  # exact beats range
  p = presets.resolve("dm", "paper", "mnist", 7)
  assert p.values == {"iterations": 2, "lr_img": 4.0, "width": 16}  # the dataset entry beats any IPC entry
  assert p.sources["width"] == "mnist entry"
  assert presets.resolve("dm", "paper", "mnist", 10).values["iterations"] == 5  # dataset + IPC beats all
  assert presets.available("dm") == ("paper",)


def test_equally_specific_conflicting_entries_are_refused(tmp_path, monkeypatch):
  opt = {"value": 1, "source": "a"}
  _write(tmp_path, monkeypatch, {"methods": ["dm"], "presets": {"paper": [
      {"ipc": "1-10", "options": {"iterations": opt}},
      {"ipc": "5-", "options": {"iterations": {"value": 2, "source": "b"}}}]}})
  try:
    assert presets.resolve("dm", "paper", "mnist", 3).values["iterations"] == 1
    with pytest.raises(ValueError, match="equally specific"):
      presets.resolve("dm", "paper", "mnist", 7)
  finally:
    presets._files.cache_clear()


@pytest.mark.parametrize("options, match", [
    ({"learning_rate_of_everything": {"value": 1, "source": "x"}}, "not accepted"),
    ({"eval_dsa": {"value": 1, "source": "x"}}, "eval_dsa must be true or false"),
    ({"eval_protocol": {"value": "kipp", "source": "x"}}, "eval_protocol must be one of"),
])
def test_validate_refuses_unknown_keys_and_bad_eval_values(tmp_path, monkeypatch, options, match):
  _write(tmp_path, monkeypatch, {"methods": ["dm"], "presets": {"paper": [{"options": options}]}})
  try:
    with pytest.raises(ValueError, match=match):
      presets.validate()
  finally:
    presets._files.cache_clear()


@pytest.mark.parametrize("bad, match", [
    ({"options": {"iterations": {"value": 1, "source": ""}}}, "non-empty source"),
    ({"options": {"iterations": {"value": 1}}}, "source"),
    ({"ipc": "ten", "options": {"iterations": {"value": 1, "source": "x"}}}, "ipc must be"),
    ({"objective": "dm", "options": {"iterations": {"value": 1, "source": "x"}}}, "parameterisation"),
])
def test_malformed_entries_are_refused(tmp_path, monkeypatch, bad, match):
  _write(tmp_path, monkeypatch, {"methods": ["dm"], "presets": {"paper": [bad]}})
  try:
    with pytest.raises(ValueError, match=match):
      presets.available("dm")
  finally:
    presets._files.cache_clear()


def test_unknown_method_preset_or_objective_raise_naming_accepted_values():
  with pytest.raises(ValueError, match=r"accepted: \['cpu', 'paper'\]"):
    presets.resolve("dc", "fastest", "fashion_mnist", 10)
  with pytest.raises(ValueError, match="accepted methods: .*'dc'"):
    presets.resolve("no_such_method", "paper", "fashion_mnist", 10)
  with pytest.raises(ValueError, match="entries cover objectives"):
    presets.resolve("haba", "paper", "fashion_mnist", 10, objective="kip")
  with pytest.raises(ValueError, match="ipc must be"):
    presets.resolve("dc", "paper", "fashion_mnist", 0)


def test_parameterisation_options_are_cli_flags_that_default_to_none():
  from experiments import distill
  defaults = {a.dest: a.default for a in distill.build_parser()._actions}
  for method, keys in presets.PARAMETERISATION_OPTIONS.items():
    for key in keys:
      assert key in defaults and defaults[key] is None, (method, key)
  for key in presets.EVAL_KEYS:
    assert defaults.get(key, "missing") is None, key


def test_describe_lists_every_value_with_its_source():
  text = presets.describe("dc")
  assert "outer_loop = 10" in text and "get_loops" in text and "note (dc; dc.json)" in text
  everything = presets.describe()
  for method in presets.methods():
    assert f"\n{method} " in everything, method


def test_readme_presets_section_lists_every_method():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  assert "## Presets" in readme
  section = readme.split("## Presets", 1)[1].split("\n## ", 1)[0]
  for method in presets.methods():
    assert f"`{method}`" in section, method
  assert os.path.exists(os.path.join(REPO, "docs", "presets.md"))


def test_cli_list_presets_exits_zero_and_lists_dc():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run([sys.executable, "-m", "experiments.distill", "--list-presets"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "\ndc " in out.stdout and "paper" in out.stdout and "benchmarks/bench_matching.py" in out.stdout


def test_cli_preset_cpu_is_recorded_and_flags_override_it(tmp_path, data_dir):
  from experiments import distill
  out = tmp_path / "run"
  metrics = distill.main(["--method", "dc", "--preset", "cpu", "--ipc", "1", "--iterations", "1",
                          "--real-per-class", "4", "--width", "8", "--eval-epochs", "1", "--eval-models", "1",
                          "--eval-width", "8", "--test-size", "100", "--quiet", "--data-dir", data_dir,
                          "--out", str(out)])
  saved = io.load_json(str(out / "metrics.json"))
  assert saved["preset"] == "cpu" == metrics["preset"]
  assert "bench_matching.py" in saved["preset_sources"]["iterations"]
  # Explicit flags beat the preset (cpu: 50 iterations, 64 real/class, width 128, 3 x 100 epochs) ...
  assert saved["iterations"] == 1 and saved["loop_config"]["real_per_class"] == 4
  assert saved["objective_config"]["width"] == 8
  assert (saved["eval_epochs"], saved["eval_models"]) == (1, 1)
  # ... and the preset beats the registry / DC's own protocol where no flag was given.
  assert saved["objective_config"]["host_inner"] is True
  assert saved["eval_dsa"] is True


def test_config_file_beats_the_preset(tmp_path):
  from experiments import distill
  from jaxdistill.data import get_spec
  cfg = tmp_path / "cfg.json"
  cfg.write_text(json.dumps({"lr_img": 0.5, "inner_loop": 3}))
  args = distill.build_parser().parse_args(["--method", "dsa", "--preset", "paper", "--ipc", "10", "--config",
                                            str(cfg), "--out", str(tmp_path / "o")])
  obj_cfg, loop_cfg, init = distill.build_configs(args, get_spec("fashion_mnist"))
  assert loop_cfg.lr_img == 0.5 and obj_cfg.inner_loop == 3  # --config
  assert obj_cfg.outer_loop == 10 and loop_cfg.iterations == 1000 and init == "real"  # the preset
  assert (args.eval_epochs, args.eval_dsa, args.eval_models) == (1000, True, 20)
  assert args.preset_sources["outer_loop"].startswith("DatasetCondensation utils.py get_loops")
  plain = distill.build_parser().parse_args(["--method", "dsa", "--ipc", "10", "--out", str(tmp_path / "p")])
  distill.build_configs(plain, get_spec("fashion_mnist"))
  assert plain.preset is None and plain.preset_sources == {}


def test_cli_sets_parameterisation_flags_from_the_preset(tmp_path):
  from experiments import distill
  from jaxdistill.data import get_spec
  argv = ["--method", "glad", "--objective", "dc", "--preset", "paper", "--ipc", "1", "--out", str(tmp_path)]
  args = distill.build_parser().parse_args(argv)
  _, loop_cfg, _ = distill.build_configs(args, get_spec("fashion_mnist"))
  assert (args.lr_features, args.lr_codes) == (1.0, 0.001)
  assert loop_cfg.param_lrs == {"features": 1.0, "codes": 0.001}
  args = distill.build_parser().parse_args(argv + ["--lr-features", "7"])
  _, loop_cfg, _ = distill.build_configs(args, get_spec("fashion_mnist"))
  assert loop_cfg.param_lrs["features"] == 7.0  # the explicit flag wins
  args = distill.build_parser().parse_args(["--method", "gendm", "--objective", "dm", "--preset", "cpu", "--ipc",
                                            "10", "--out", str(tmp_path)])
  _, loop_cfg, _ = distill.build_configs(args, get_spec("fashion_mnist"))
  assert args.gen_widths == (32, 32, 24) and (loop_cfg.optimizer, loop_cfg.lr_img) == ("adam", 0.001)


def test_kip_cpu_preset_evaluates_like_the_random_subset():
  """KIP's cpu preset evaluates with the shared cross-entropy rule (``eval_protocol`` "dsa"), the rule of the
  random-subset baseline it is compared with; the paper preset keeps KIP's own MSE protocol."""
  assert presets.resolve("kip", "cpu", "fashion_mnist", 1).values["eval_protocol"] == "dsa"
  assert "eval_protocol" not in presets.resolve("kip", "paper", "fashion_mnist", 1).values
