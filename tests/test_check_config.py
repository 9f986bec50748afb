"""`sage-runtime --check-config` resolves every plugin and validates its options without binding a
socket or loading a weight, and every level of the config model refuses unknown keys."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from sage_runtime.config import SageConfig, load_config
from sage_runtime.errors import ConfigError
from tests.harness import REPO, SAGE_RUNTIME

CONFIGS = sorted((REPO / "sage_runtime" / "configs").glob("*.yaml"))


def check(tmp_path: Path, config: dict | None = None, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config or {}))
    path.chmod(0o600)
    env = {**os.environ, "SAGE_RUNTIME_DIR": str(tmp_path / "run"), "SAGE_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([SAGE_RUNTIME, "--config", str(path), "--check-config", *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("shipped", CONFIGS, ids=lambda p: p.name)
def test_each_shipped_config_checks_clean(shipped, tmp_path):
    out = subprocess.run([SAGE_RUNTIME, "--config", str(shipped), "--check-config"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "SAGE_RUNTIME_DIR": str(tmp_path / "run")})
    assert out.returncode == 0, out.stderr


def test_the_demo_config_checks_clean(tmp_path):
    out = check(tmp_path, {}, "--demo")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["plugins"]["enabled"] == ["vision", "language", "memory", "reasoning"]


@pytest.mark.parametrize("config, key", [
    ({"plugins": {"enabled": ["vison"]}}, "'vison'"),
    ({"plugins": {"enabled": ["tests.plugins_for_tests:Ecco"]}}, "tests.plugins_for_tests:Ecco"),
    ({"plugins": {"enabled": ["vision"], "options": {"vision": {"lamm": 1.0}}}}, "plugins.options.vision.lamm"),
    ({"plugins": {"enabled": ["vision"], "options": {"vision": {"lam": "big"}}}}, "plugins.options.vision.lam"),
    ({"plugins": {"enabled": ["memory"], "options": {"memory": {"capacity": 0}}}}, "plugins.options.memory.capacity"),
    ({"plugins": {"enabled": ["reasoning"], "options": {"reasoning": {"resume": "maybe"}}}},
     "plugins.options.reasoning.resume"),
    ({"plugins": {"enabled": ["language"], "options": {"language": {"max_batch": 1.5}}}},
     "plugins.options.language.max_batch"),
    ({"plugins": {"enabled": ["vision"], "options": {"vison": {"lam": 1.0}}}}, "plugins.options.vison"),
    ({"plugins": {"enabled": ["tests.plugins_for_tests:Echo", "tests.plugins_for_tests:Echo"]}}, "both named 'echo'"),
], ids=["misspelt-name", "missing-class", "misspelt-option", "wrong-type-option", "out-of-range-option",
        "wrong-type-bool", "wrong-type-int", "options-for-misspelt-name", "duplicate-name"])
def test_check_config_exits_2_naming_the_key(tmp_path, config, key):
    out = check(tmp_path, config)
    assert out.returncode == 2, out.stdout + out.stderr
    assert key in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_check_config_loads_no_weights_and_binds_no_socket(tmp_path):
    """A weights path that does not exist is only read in setup(), which --check-config never runs."""
    out = check(tmp_path, {"plugins": {"enabled": ["vision"],
                                       "options": {"vision": {"weights": str(tmp_path / "absent.pt")}}}})
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "run" / "control.sock").exists() and not (tmp_path / "state").exists()


def _fields(model: type) -> dict:
    return model.model_fields if issubclass(model, BaseModel) else model.__pydantic_fields__


def _config(model: type) -> dict:
    return model.model_config if issubclass(model, BaseModel) else model.__pydantic_config__


def _models(model: type, seen: set[type]) -> list[type]:
    """Every pydantic model or pydantic dataclass reachable from `model` through its fields."""
    import typing

    if model in seen:
        return []
    seen.add(model)
    out = [model]
    for field in _fields(model).values():
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and (issubclass(t, BaseModel) or hasattr(t, "__pydantic_fields__")):
                out += _models(t, seen)
            stack += list(typing.get_args(t))
    return out


def test_every_level_of_the_config_model_refuses_unknown_keys():
    models = _models(SageConfig, set())
    names = {m.__name__ for m in models}
    assert names >= {"SageConfig", "SensorSection", "MetabolicParams", "Edge", "AtpParams", "SalienceParams",
                     "SnarcWeights", "TrustParams", "TelemetryParams"}, names
    for model in models:
        assert _config(model).get("extra") == "forbid", f"{model.__name__} accepts unknown keys"


@pytest.mark.parametrize("section", sorted(SageConfig.model_fields))
def test_a_misspelt_key_in_each_section_is_refused_naming_it(tmp_path, section):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({section: {"no_such_key": 1}}))
    with pytest.raises(ConfigError, match=rf"{section}\.no_such_key: unknown key"):
        load_config(path, environ={})


def test_nested_levels_refuse_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    for doc, key in (({"ingest": {"sensors": {"cam": {"kind": "tensor", "polcy": "latest"}}}},
                      "ingest.sensors.cam.polcy"),
                     ({"metabolic": {"edges": [{"source": "WAKE", "target": "REST", "when": {"atp_below": 0.1},
                                                "whn": 1}]}}, "metabolic.edges.0.whn"),
                     ({"salience": {"weights": {"novelt": 1.0}}}, "salience.weights.novelt")):
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ConfigError, match=rf"{key.replace('.', chr(92) + '.')}: unknown key"):
            load_config(path, environ={})


def test_every_plugin_options_model_refuses_unknown_keys():
    from importlib.metadata import entry_points

    from sage_runtime.plugin import PluginOptions, validate_options
    from tests import plugins_for_tests

    classes = [ep.load() for ep in entry_points(group="sage_runtime.plugins")]
    classes += [plugins_for_tests.Echo, plugins_for_tests.Faulty, plugins_for_tests.Burner]
    assert {c.name for c in classes} >= {"vision", "language", "memory", "reasoning"}
    for cls in classes:
        assert issubclass(cls.Options, PluginOptions)
        assert cls.Options.model_config.get("extra") == "forbid", cls
        with pytest.raises(ConfigError, match=rf"plugins\.options\.{cls.name}\.no_such_key: unknown key"):
            validate_options(cls, {"no_such_key": 1})
