"""The persistent compilation cache every CLI turns on (experiments.common.enable_compile_cache): the folder
rules, and that a second process loads the program the first one compiled instead of compiling it again."""
import os
import subprocess
import sys
import textwrap


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import json, sys, jax, jax.numpy as jnp
    from experiments import common
    folder = common.enable_compile_cache(sys.argv[1] if len(sys.argv) > 1 else None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    hits = []
    jax.monitoring.register_event_listener(lambda e, **kw: hits.append(e) if e.endswith("/cache_hits") else None)
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    print(json.dumps({"folder": folder, "value": float(f(jnp.arange(12.0).reshape(3, 4))), "hits": len(hits)}))
""")


def _run(env_value, *args, jax_dir=None):
  env = dict(os.environ, JAXDISTILL_COMPILE_CACHE=env_value, PYTHONPATH=REPO)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if jax_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = jax_dir
  import json
  out = subprocess.run([sys.executable, "-c", PROGRAM, *args], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_reuses_the_first_ones_compiled_program(tmp_path):
  folder = str(tmp_path / "cache")
  first = _run(folder)
  assert first["folder"] == folder
  entries = sorted(os.listdir(folder))
  assert entries, "nothing was written to the cache folder"
  second = _run(folder)
  assert second["value"] == first["value"]
  assert first["hits"] == 0 and second["hits"] >= 1  # loaded from the folder, not compiled again
  assert sorted(os.listdir(folder)) == entries


def test_off_and_explicit_folder(tmp_path):
  assert _run("off")["folder"] is None
  assert _run("0")["folder"] is None
  explicit = str(tmp_path / "flag")
  assert _run("off", explicit)["folder"] == explicit  # the --compile-cache flag wins over the environment
  assert os.listdir(explicit)


def test_every_cli_offers_the_flag():
  from experiments import buffers, coreset, distill, evaluate
  for module in (distill, coreset, evaluate, buffers):
    parser = module.build_parser()
    assert any("--compile-cache" in a.option_strings for a in parser._actions), module.__name__


def test_a_cache_chosen_through_jax_is_kept(tmp_path):
  own = str(tmp_path / "jax_own")
  assert _run("off", jax_dir=own)["folder"] == own
  assert _run(str(tmp_path / "ours"), jax_dir=own)["folder"] == own
