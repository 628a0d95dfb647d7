"""Review fixes in config validation: a key repeated inside a one-line mapping, choices kept as the field
spells them, and NaN / inf refused where they would slip through every range check."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from qfair.config import cfg_field, config_from_dict, load_config, validate_fields
from qfair.config.base import read_yaml
from qfair.utils.errors import ConfigError

# --- 1. a key given twice in a flow mapping ---------------------------------------------------------


def test_a_key_repeated_in_a_one_line_mapping_is_an_error(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("{bits: 6, bits: 8}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:1:11: .*key 'bits' given twice \(first on line 1, column 2\)"):
        read_yaml(p)
    p.write_text("name: s\nfinetune: {steps: 2, lr: 0.1, steps: 500}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:2:31: .*key 'steps' given twice \(first on line 2, column 12\)"):
        read_yaml(p)
    p.write_text("ptq: [adaround]\nlayer_wbits: {fc: 8, conv1: 6, fc: 4}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:2:32: .*key 'fc' given twice"):
        read_yaml(p)
    p.write_text("calibration:\n  - {label: a, source: builtin, label: b}\n")  # a mapping inside a list
    with pytest.raises(ConfigError, match=r"dup.yaml:2:33: .*key 'label' given twice"):
        read_yaml(p)


def test_a_repeat_in_a_one_line_mapping_fails_load_config_and_the_cli(tmp_path, capsys):
    from qfair.cli import main
    from qfair.quant.config import QuantizeRunConfig

    p = tmp_path / "q.yaml"
    p.write_text("{bits: 6, bits: 8}\n")
    with pytest.raises(ConfigError, match=r"q.yaml:1:11: .*key 'bits' given twice"):
        load_config(QuantizeRunConfig, p)
    assert main(["quantize", "--config", str(p)]) == 2
    captured = capsys.readouterr()
    assert "key 'bits' given twice" in captured.out + captured.err


def test_the_same_key_in_different_one_line_mappings_and_merge_overrides_are_fine(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("a: {bits: 6}\nb: {bits: 8}\nc: [{bits: 2}, {bits: 4}]\n")
    assert read_yaml(p) == {"a": {"bits": 6}, "b": {"bits": 8}, "c": [{"bits": 2}, {"bits": 4}]}
    # a key brought in by a << merge may be overridden (YAML semantics), on one line or several
    p.write_text("base: &b {bits: 4, lr: 0.1}\nx: {<<: *b, bits: 8}\ny:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(p) == {"base": {"bits": 4, "lr": 0.1}, "x": {"bits": 8, "lr": 0.1},
                            "y": {"bits": 4, "lr": 0.2}}
    # a mapping whose own merge was flattened through an alias before it was built is not blamed
    p.write_text("c: &c {bits: 2}\na:\n  inner: &b\n    <<: *c\n    bits: 4\nx: {<<: *b, bits: 8}\n")
    assert read_yaml(p) == {"c": {"bits": 2}, "a": {"inner": {"bits": 4}}, "x": {"bits": 8}}
    p.write_text("base: &b {bits: 4}\nx: {<<: *b, bits: 6, bits: 8}\n")  # a repeat of its own keys is not
    with pytest.raises(ConfigError, match=r"ok.yaml:2:22: .*key 'bits' given twice"):
        read_yaml(p)


# --- 2. choices are stored as the field spells them --------------------------------------------------


def test_a_choice_in_another_case_becomes_the_listed_spelling_from_flags(tmp_path):
    from qfair.cli import build_parser
    from qfair.cli.quantize import resolve
    from qfair.quant.config import QuantizeRunConfig

    args = build_parser().parse_args(["quantize", "--calib", "Synthetic", "--recipe", "QuantFace",
                                      "--observer", "MSE", "--ptq", "BN_Reestimate", "AdaRound"])
    cfg = resolve(args, QuantizeRunConfig)
    assert cfg.calib == "synthetic" and cfg.recipe == "quantface" and cfg.observer == "mse"
    assert cfg.ptq == ("bn_reestimate", "adaround")
    # and downstream code that compares exact strings sees the canonical value
    from qfair.cli.quantize import calibration_source

    assert calibration_source(cfg.calib, cfg.calib_data) == calibration_source("synthetic", None)


def test_a_choice_in_another_case_becomes_the_listed_spelling_from_yaml_and_python(tmp_path):
    from qfair.export.config import ExportConfig
    from qfair.quant.config import QuantConfig, QuantizeRunConfig
    from qfair.study.config import StudyConfig

    p = tmp_path / "q.yaml"
    p.write_text("calib: SYNTHETIC\nrecipe: Deploy\nptq: [Bias_Correction]\nweight_observer: Percentile\n")
    cfg = load_config(QuantizeRunConfig, p)
    assert (cfg.calib, cfg.recipe, cfg.ptq, cfg.weight_observer) == ("synthetic", "deploy", ("bias_correction",),
                                                                      "percentile")
    q = QuantConfig(recipe="Deploy", ptq=("AdaRound",))  # built in Python
    assert q.recipe == "deploy" and q.ptq == ("adaround",)
    assert ExportConfig(format="ONNX", keep_float="None").format == "onnx"
    s = tmp_path / "s.yaml"
    s.write_text("models: [{name: m, checkpoint: builtin:mobilefacenet}]\n"
                 "calibration: [{label: real, source: builtin}]\n"
                 "observer: MinMax\nrecipes: [QuantFace]\nfinetune: {enabled: false}\n"
                 "export: {target: ONNXRuntime, calibration: [real]}\neval: {mode: Grid}\n")
    st = load_config(StudyConfig, s)
    assert st.observer == "minmax" and st.recipes == ("quantface",)
    assert st.export.target == "onnxruntime" and st.eval.mode == "grid"


def test_unknown_choices_are_still_refused_with_a_hint():
    from qfair.quant.config import QuantizeRunConfig

    with pytest.raises(ConfigError, match=r"--calib \(command line\): got 'synthetc', allowed: .*Did you mean"):
        load_config(QuantizeRunConfig, None, {"calib": "synthetc"})


# --- 3. NaN and inf ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Floats:
    ranged: float = cfg_field(0.5, range=(0.0, 1.0))
    open_ranged: float = cfg_field(1.0, range=(0.0, None))
    free: float = cfg_field(0.0)
    free_list: tuple[float, ...] = cfg_field(())
    optional: float | None = cfg_field(None, range=(0.0, None))
    limit: float = cfg_field(math.inf, range=(0.0, None), allow_inf=True, help="inf: no limit")
    maybe: float = cfg_field(math.nan, allow_nan=True)
    count: int = cfg_field(1, range=(0, None))

    def __post_init__(self) -> None:
        validate_fields(self)


@pytest.mark.parametrize("key,value,message", [
    ("ranged", math.nan, r"key 'ranged': got nan, expected a finite number in \[0.0, 1.0\]"),
    ("ranged", math.inf, r"key 'ranged': got inf, expected a finite number in \[0.0, 1.0\]"),
    ("open_ranged", math.inf, r"key 'open_ranged': got inf, expected a finite number >= 0.0"),
    ("open_ranged", -math.inf, r"key 'open_ranged': got -inf, expected a finite number >= 0.0"),
    ("optional", math.nan, r"key 'optional': got nan, expected a finite number >= 0.0"),
    ("free", math.nan, r"key 'free': got nan, expected a number \(NaN is not allowed\)"),
    ("free_list", [1.0, math.nan], r"key 'free_list': got nan, expected a number \(NaN is not allowed\)"),
    ("limit", math.nan, r"key 'limit': got nan"),
    ("limit", -math.inf, r"key 'limit': got -inf, allowed range is \[0.0, inf\]"),
])
def test_non_finite_floats_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(Floats, {key: value}, source="f.yaml")
    with pytest.raises(ConfigError, match=message.replace("key '", "").replace("'", "", 1)):
        Floats(**{key: tuple(value) if isinstance(value, list) else value})  # built in Python


def test_non_finite_floats_where_the_field_allows_them():
    cfg = config_from_dict(Floats, {"free": math.inf, "free_list": [-math.inf], "limit": math.inf,
                                    "maybe": math.nan})
    assert cfg.free == math.inf and cfg.free_list == (-math.inf,) and cfg.limit == math.inf
    assert math.isnan(cfg.maybe)
    assert math.isnan(Floats().maybe) and Floats().limit == math.inf
    with pytest.raises(ConfigError, match=r"key 'count': got nan \(float\), expected an integer"):
        config_from_dict(Floats, {"count": math.nan})


def test_nan_and_inf_from_yaml_are_refused_naming_file_and_key(tmp_path):
    from qfair.study.config import StudyConfig
    from qfair.train.config import TrainConfig

    p = tmp_path / "t.yaml"
    for text, message in [
        ("lr: .nan\n", r"t.yaml:1: key 'lr': got nan, expected a finite number >= 0"),
        ("momentum: .NaN\n", r"t.yaml:1: key 'momentum': got nan, expected a finite number in \[0, 1\]"),
        ("grad_clip: .inf\n", r"t.yaml:1: key 'grad_clip': got inf, expected a finite number >= 0"),
        ("margin_m: .nan\n", r"t.yaml:1: key 'margin_m': got nan, expected a number \(NaN is not allowed\)"),
        ("milestones: [0.5, .nan]\n", r"t.yaml:1: key 'milestones': got nan"),
    ]:
        p.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(TrainConfig, p)
    s = tmp_path / "s.yaml"
    s.write_text("models: [{name: m, checkpoint: builtin:mobilefacenet}]\n"
                 "calibration: [{label: real, source: builtin}]\nfinetune: {start_from: real, lr: .nan}\n")
    with pytest.raises(ConfigError, match=r"s.yaml:3: key 'finetune.lr': got nan, expected a finite number >= 0.0"):
        load_config(StudyConfig, s)


def test_nan_on_the_command_line_names_the_flag(tmp_path, capsys):
    from qfair.cli import build_parser, main
    from qfair.config import overrides_from_args
    from qfair.eval.config import EvalConfig

    args = build_parser().parse_args(["evaluate", "x", "--out", "o", "--alpha", "nan"])
    with pytest.raises(ConfigError, match=r"^--alpha \(command line\): got nan, expected a finite number in "
                                          r"\[0.0, 1.0\]"):
        load_config(EvalConfig, None, overrides_from_args(args, EvalConfig))
    with pytest.raises(ConfigError, match=r"^--target-fmr \(command line\): got inf, expected a finite number"):
        load_config(EvalConfig, None, {"target_fmr": math.inf})
    assert main(["evaluate", str(tmp_path / "no-such-target"), "--out", str(tmp_path / "o"), "--alpha", "nan"]) == 2
    captured = capsys.readouterr()
    assert "--alpha (command line): got nan" in captured.out + captured.err
