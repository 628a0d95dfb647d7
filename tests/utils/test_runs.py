"""RunDir.written_by / refuse_foreign: the one place that says which command owns a run folder."""
import pytest

from qfair.runs import RunDir
from qfair.utils.errors import ConfigError


def test_written_by_reads_the_recorded_command(tmp_path):
    RunDir.create(tmp_path / "r", {"seed": 1}, command="qfair quantize --bits 6 --out r")
    assert RunDir(tmp_path / "r").written_by() == "qfair quantize --bits 6 --out r"


@pytest.mark.parametrize("text", [None, "command: ''\n", "- a list\n", "{unclosed: [\n"])
def test_written_by_is_none_without_a_readable_owner(tmp_path, text):
    if text is not None:
        (tmp_path / "config.yaml").write_text(text)
    assert RunDir(tmp_path).written_by() is None


def test_refuse_foreign_names_the_other_command_and_the_flag(tmp_path):
    RunDir.create(tmp_path, {"seed": 1}, command="qfair qat --student s --out x")
    RunDir(tmp_path).refuse_foreign(("qfair qat",))  # its own command: allowed
    with pytest.raises(ConfigError, match=r"--out .* another command \('qfair qat'.*Pick another --out"):
        RunDir(tmp_path).refuse_foreign(("qfair quantize", "qfair.save_quantized"))
    with pytest.raises(ConfigError, match="Pick another --dir"):
        RunDir(tmp_path).refuse_foreign(("qfair sensitivity",), flag="--dir")
