"""Config errors name the line of the key in the YAML file (FILE:LINE: key 'K'), as the YAML syntax errors do."""
from __future__ import annotations

import pytest

from qfair.config import load_config
from qfair.utils.errors import ConfigError

STUDY = """\
name: t
models:
  - name: m
    checkpoint: builtin:mobilefacenet
calibration:
  - {label: real, source: builtin}
  - label: synthetic
    source: builtin-synthetic
    sise: 8
finetune:
  start_from: real
  enabeld: false
"""


def _study(tmp_path, text):
    from qfair.study.config import StudyConfig

    p = tmp_path / "st.yaml"
    p.write_text(text)
    return load_config(StudyConfig, p)


def test_unknown_nested_keys_name_their_line(tmp_path):
    with pytest.raises(ConfigError, match=r"st\.yaml:9: key 'calibration\[1\]\.sise' is not a CalibSpec setting"):
        _study(tmp_path, STUDY)
    with pytest.raises(ConfigError, match=r"st\.yaml:11: key 'finetune\.enabeld' is not a FinetuneSpec setting"):
        _study(tmp_path, STUDY.replace("    sise: 8\n", ""))


def test_wrong_types_name_their_line(tmp_path):
    text = STUDY.replace("    sise: 8\n", "    size: many\n").replace("  enabeld: false\n", "")
    with pytest.raises(ConfigError, match=r"st\.yaml:9: key 'calibration\[1\]\.size': got 'many'"):
        _study(tmp_path, text)
    with pytest.raises(ConfigError, match=r"st\.yaml:5: key 'calibration\[0\]': got 'real'"):
        _study(tmp_path, "models: [{name: m, checkpoint: x.pt}]\n\n\n\ncalibration: [real]\n")


def test_a_flag_is_still_named_as_the_flag(tmp_path):
    from qfair.study.config import StudyConfig

    p = tmp_path / "st.yaml"
    p.write_text(STUDY.replace("    sise: 8\n", "").replace("  enabeld: false\n", "") + "seed: 3\n")
    with pytest.raises(ConfigError, match=r"^--seed \(command line\): got -2"):
        load_config(StudyConfig, p, {"seed": -2})


def test_key_lines_only_composes():
    from qfair.config.base import key_lines

    lines = key_lines("a: &x {b: 1}\nc: *x\nd:\n  - e: !!python/object/apply:os.system [echo]\n")
    assert lines == {"a": 1, "a.b": 1, "c": 2, "d": 3, "d[0]": 4, "d[0].e": 4, "d[0].e[0]": 4}
    assert key_lines("a: [unclosed\n") == {}


def test_a_self_referencing_alias_does_not_loop():
    from qfair.config.base import key_lines

    assert key_lines("a: &x [*x]\n") == {"a": 1, "a[0]": 1}
