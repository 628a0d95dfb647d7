"""Typed configs: unknown keys, wrong types, ranges, choices, flags overriding files."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from qfair.config import add_config_arguments, cfg_field, config_to_dict, load_config, overrides_from_args
from qfair.utils.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    momentum: float = cfg_field(0.9, range=(0.0, 1.0))


@dataclass(frozen=True)
class Demo:
    bits: int = cfg_field(8, help="bit width", range=(2, 8))
    observer: str = cfg_field("minmax", choices=["minmax", "mse"])
    lr: float = cfg_field(0.1, range=(0.0, None))
    flip: bool = cfg_field(True)
    skip: tuple[str, ...] = cfg_field((), help="patterns")
    out: str | None = cfg_field(None)
    inner: Inner = cfg_field(default_factory=Inner)


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_load_and_defaults(tmp_path):
    cfg = load_config(Demo, write(tmp_path, "bits: 6\nlr: 1\nskip: [conv1, fc]\ninner: {momentum: 0.5}\n"))
    assert cfg.bits == 6 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.skip == ("conv1", "fc") and cfg.inner.momentum == 0.5 and cfg.flip is True
    assert config_to_dict(cfg)["skip"] == ["conv1", "fc"]


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "bitz: 6\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Demo, p)
    msg = str(exc.value)
    assert str(p) in msg and "'bitz'" in msg and "Did you mean 'bits'" in msg and "observer" in msg


def test_nested_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match=r"inner.momentun"):
        load_config(Demo, write(tmp_path, "inner: {momentun: 0.5}\n"))


@pytest.mark.parametrize("text,fragment", [
    ("bits: 9\n", "allowed range is [2, 8]"),
    ("bits: six\n", "expected an integer"),
    ("flip: 'yes'\n", "expected true or false"),
    ("observer: minmx\n", "Did you mean 'minmax'"),
    ("lr: -1\n", "allowed range"),
    ("skip: conv1\n", "expected list of str"),
])
def test_bad_values_name_key_value_and_allowed(tmp_path, text, fragment):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(Demo, p)
    assert fragment in str(exc.value) and str(p) in str(exc.value)


def test_yaml_never_runs_code(tmp_path):
    p = write(tmp_path, "bits: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1"):
        load_config(Demo, p)
    assert not (tmp_path / "pwned").exists()


def test_flags_override_file(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Demo)
    args = parser.parse_args(["--bits", "6", "--no-flip", "--skip", "a", "b"])
    cfg = load_config(Demo, write(tmp_path, "bits: 8\nobserver: mse\n"), overrides_from_args(args, Demo))
    assert cfg.bits == 6 and cfg.flip is False and cfg.observer == "mse" and cfg.skip == ("a", "b")
    # a flag that was not given leaves the file's value alone
    cfg = load_config(Demo, write(tmp_path, "flip: false\n"), overrides_from_args(parser.parse_args([]), Demo))
    assert cfg.flip is False


def test_base_settings_then_file_then_flags(tmp_path):
    base = {"bits": 4, "observer": "mse", "lr": 0.5}
    cfg = load_config(Demo, write(tmp_path, "lr: 0.2\n"), {"bits": 6}, base=base, base_source="run/config.yaml")
    assert (cfg.bits, cfg.observer, cfg.lr) == (6, "mse", 0.2)
    assert load_config(Demo, base=base).bits == 4 and base == {"bits": 4, "observer": "mse", "lr": 0.5}
    with pytest.raises(ConfigError, match=r"run/config.yaml: key 'observer'"):  # a bad recorded value: its file
        load_config(Demo, None, {"bits": 6}, base={"observer": "max"}, base_source="run/config.yaml")
    with pytest.raises(ConfigError, match=r"--bits \(command line\)"):  # a bad flag: the flag
        load_config(Demo, None, {"bits": 9}, base={"bits": 4}, base_source="run/config.yaml")


def test_all_shipped_configs_are_valid_yaml_mappings():
    from pathlib import Path

    from qfair.config.base import read_yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.yaml"))
    for f in files:
        assert isinstance(read_yaml(f), dict), f


def test_configs_named_in_shipped_configs_and_readme_exist():
    import re
    from pathlib import Path

    top = Path(__file__).resolve().parents[2]
    texts = [*sorted((top / "configs").glob("*.yaml")), top / "README.md"]
    named = {(t.name, m) for t in texts for m in re.findall(r"configs/[\w.-]+\.yaml", t.read_text())}
    assert len(named) > 10
    missing = sorted((where, m) for where, m in named if not (top / m).is_file())
    assert not missing, f"usage lines name configs that do not exist: {missing}"


def test_config_that_is_a_directory(tmp_path):
    import re

    from qfair.cli import main

    with pytest.raises(ConfigError, match=re.escape(f"config {tmp_path} is a directory; pass a YAML file")):
        load_config(Demo, tmp_path)
    assert main(["quantize", "--config", str(tmp_path)]) == 2


def test_a_key_given_twice_is_an_error(tmp_path):
    # plain YAML keeps the last value silently: bits 6 ... bits 8 would quantize at 8 bits
    from qfair.config.base import read_yaml

    p = tmp_path / "dup.yaml"
    p.write_text("bits: 6\nrecipe: quantface\nbits: 8\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:3:1: .*key 'bits' given twice \(first on line 1\)"):
        read_yaml(p)
    p.write_text("layer_wbits:\n  fc: 8\n  conv1: 8\n  fc: 6\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4:3: .*key 'fc' given twice \(first on line 2\)"):
        read_yaml(p)
    p.write_text("bits: 6\nlayer_wbits:\n  bits: 8\n")  # the same name in another mapping is fine
    assert read_yaml(p) == {"bits": 6, "layer_wbits": {"bits": 8}}
    p.write_text("bits: 6\n\trecipe: x\n")  # a syntax error is not blamed on python tags
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    assert "python tags" not in str(e.value) and "dup.yaml:2:1" in str(e.value)


def test_errors_name_the_flag_or_the_file_the_value_came_from(tmp_path):
    from qfair.quant.config import QuantizeRunConfig

    p = tmp_path / "q.yaml"
    p.write_text("bits: 6\nrecipe: nosuch\n")
    with pytest.raises(ConfigError, match=r"^--bits \(command line\): got 9, allowed range is \[2, 8\]"):
        load_config(QuantizeRunConfig, p, {"bits": 9})  # the file's bits: 6 is overridden: blame the flag
    with pytest.raises(ConfigError, match=r"q.yaml:2: key 'recipe': got 'nosuch'"):
        load_config(QuantizeRunConfig, p, {"bits": 8})
    with pytest.raises(ConfigError, match=r"^--calib-size \(command line\): got 0"):
        load_config(QuantizeRunConfig, None, {"calib_size": 0})


def test_cross_field_check_errors_name_the_flags_or_the_file(tmp_path):
    from qfair.eval.config import EvalConfig
    from qfair.export.config import ExportConfig

    p = tmp_path / "e.yaml"
    p.write_text("target_fmr: 0\n")
    with pytest.raises(ConfigError, match=r"^--target-fmr \(command line\): target_fmr must be > 0"):
        load_config(EvalConfig, None, {"target_fmr": 0.0})
    with pytest.raises(ConfigError, match=r"^--target-fmr \(command line\): target_fmr must be > 0"):
        load_config(EvalConfig, p, {"target_fmr": 0.0})  # the flag overrides the file: blame the flag
    with pytest.raises(ConfigError, match=r"e.yaml: target_fmr must be > 0"):
        load_config(EvalConfig, p, {})
    with pytest.raises(ConfigError, match=r"^--format, --target \(command line\): format 'tensorrt'"):
        load_config(ExportConfig, None, {"format": "tensorrt", "target": "onnxruntime"})
    p.write_text("format: tensorrt\n")  # one of the two settings from the file: name the file
    with pytest.raises(ConfigError, match=r"e.yaml: format 'tensorrt'"):
        load_config(ExportConfig, p, {"target": "onnxruntime"})


@pytest.mark.parametrize("build, match", [
    (lambda: __import__("qfair.train", fromlist=["QatConfig"]).QatConfig(student="run", steps="10"),
     r"^steps: got '10' \(str\), expected an integer"),
    (lambda: __import__("qfair.eval.config", fromlist=["EvalConfig"]).EvalConfig(n_folds=0),
     r"^n_folds: got 0, allowed range"),
    (lambda: __import__("qfair.export.config", fromlist=["ExportConfig"]).ExportConfig(target="nope"),
     r"^target: got 'nope', allowed: onnxruntime, tensorrt"),
    (lambda: __import__("qfair.quant.config", fromlist=["QuantConfig"]).QuantConfig(skip="fc"),
     r"^skip: got 'fc' \(str\), expected"),
])
def test_configs_built_in_python_are_checked_like_files(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_validate_fields_converts_as_loading_does():
    from pathlib import Path

    from qfair.eval.config import EvalConfig
    from qfair.train import DistillConfig

    assert DistillConfig(teacher=Path("t.pt")).teacher == "t.pt"  # a Path where a str goes, as in YAML
    assert EvalConfig(target_fmr=1).target_fmr == 1.0 and isinstance(EvalConfig(target_fmr=1).target_fmr, float)
    assert EvalConfig() == load_config(EvalConfig, None, {})


def test_unknown_key_error_uses_an_before_a_vowel():
    from qfair.config import config_from_dict
    from qfair.eval.config import EvalConfig
    from qfair.quant import QuantConfig

    with pytest.raises(ConfigError, match="is not an EvalConfig setting"):
        config_from_dict(EvalConfig, {"nope": 1}, source="x.yaml")
    with pytest.raises(ConfigError, match="is not a QuantConfig setting"):
        config_from_dict(QuantConfig, {"nope": 1}, source="x.yaml")
