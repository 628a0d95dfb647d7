"""Messages a newcomer's review found unclear: each names what was given, where, and what to do."""
from __future__ import annotations

import warnings

import pytest

import qfair.cli
from qfair.cli import main
from qfair.data.verification import open_benchmark
from qfair.utils.errors import DataError, QfairError
from qfair.utils.io import output_file


def test_cli_warnings_are_one_line_and_restored(monkeypatch):
    import qfair.cli.models

    seen = {}

    def run(args):
        seen["text"] = warnings.formatwarning("head keys dropped", UserWarning, "/x/quantize.py", 50, "warn(...)")
        return 0

    monkeypatch.setattr(qfair.cli.models, "run", run)
    assert main(["models"]) == 0
    assert seen["text"] == "warning: head keys dropped\n"  # no file, line or source line
    assert warnings.formatwarning is not qfair.cli._format_warning  # the caller's format is back
    assert main(["models", "--debug"]) == 0
    assert "/x/quantize.py:50" in seen["text"]  # --debug keeps Python's full format


def test_compare_names_a_missing_reference(tmp_path, capsys):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    assert main(["compare", str(a), str(b), "--reference", "foo", "--bench", "builtin:tiny",
                 "--out", str(tmp_path / "cmp")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "model not found: --reference foo" in err


@pytest.mark.parametrize("spec,example", [("rfw", "rfw:/data/RFW"), ("rfw:", "rfw:/data/RFW"),
                                          ("bin", "bin:/data/lfw.bin"), ("csv: ", "csv:pairs.csv")])
def test_a_benchmark_kind_without_a_path_says_so(spec, example):
    with pytest.raises(DataError, match=f"names no path.*e.g. {example}"):
        open_benchmark(spec)


def test_an_output_under_a_file_names_the_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(QfairError, match=r"afile is a file, not a folder"):
        output_file(tmp_path / "afile" / "sub" / "x.qpk", mkdir=True)
