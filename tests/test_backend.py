"""Backend-aware defaults (jaxdistill.backend): a field left at None takes the backend's choice, an explicit
value is kept; DC's host loop, MTT's straight-line student and BPTT's partial unroll follow it."""
import pytest

from jaxdistill import backend, objectives


def test_choose_keeps_explicit_values_and_resolves_none(monkeypatch):
  assert backend.name() == "cpu" and backend.on_cpu()  # the test machine
  assert backend.choose(None, cpu=True, accelerator=False) is True
  assert backend.choose(False, cpu=True, accelerator=False) is False
  assert backend.choose(3, cpu=10, accelerator=1) == 3
  monkeypatch.setattr(backend, "name", lambda: "gpu")
  assert backend.choose(None, cpu=True, accelerator=False) is False
  assert backend.choose(None, cpu=10, accelerator=1) == 1
  assert backend.choose(True, cpu=False, accelerator=False) is True


@pytest.mark.parametrize("name, expect_host", [("cpu", True), ("gpu", False)])
def test_dc_host_inner_default_follows_the_backend(monkeypatch, name, expect_host):
  monkeypatch.setattr(backend, "name", lambda: name)
  cfg = objectives.default_config("dc", width=8)
  assert cfg.host_inner is None
  obj = objectives.make_objective("dc", cfg, num_classes=3, image_shape=(8, 8, 1), ipc=1)
  assert (obj.host_update is not None) == expect_host
  explicit = objectives.make_objective("dc", objectives.default_config("dc", width=8, host_inner=not expect_host),
                                       num_classes=3, image_shape=(8, 8, 1), ipc=1)
  assert (explicit.host_update is not None) == (not expect_host)


def test_unroll_defaults_are_none_and_validate():
  assert objectives.default_config("mtt").unroll is None
  cfg = objectives.default_config("dd")
  assert cfg.scan_unroll is None
  cfg.validate()
  with pytest.raises(ValueError, match="scan_unroll"):
    objectives.default_config("dd", scan_unroll=0).validate()
