import numpy as np
import pytest
from PIL import Image

from qfair.data import open_benchmark, read_pairs_csv
from qfair.utils.errors import DataError


def _imgs(root, n=4):
    for i in range(n):
        Image.fromarray(np.full((112, 112, 3), i * 20, np.uint8)).save(root / f"{i}.png")


def test_read_with_header_and_groups(tmp_path):
    _imgs(tmp_path)
    (tmp_path / "pairs.csv").write_text("path1,path2,same,group\n0.png,1.png,1,A\n2.png,3.png,0,B\n0.png,3.png,false,A\n")
    vs = read_pairs_csv(tmp_path / "pairs.csv")
    assert len(vs.images) == 4 and vs.pairs.tolist() == [[0, 1], [2, 3], [0, 3]]
    assert vs.issame.tolist() == [True, False, False] and vs.groups.tolist() == ["A", "B", "A"]
    assert vs.images[3][0, 0, 0].item() == 60 and vs.pair_ids is None
    assert open_benchmark(f"mybench:{tmp_path / 'pairs.csv'}").name == "mybench"


def test_ids_and_no_group(tmp_path):
    _imgs(tmp_path)
    (tmp_path / "p.csv").write_text("0.png,1.png,1\n")
    assert read_pairs_csv(tmp_path / "p.csv").groups.tolist() == ["all"]
    (tmp_path / "q.csv").write_text("0.png,1.png,1,A,bob,bob\n1.png,2.png,0,A,bob,amy\n")
    assert read_pairs_csv(tmp_path / "q.csv").pair_ids.tolist() == [["bob", "bob"], ["bob", "amy"]]


@pytest.mark.parametrize("line,msg", [("0.png,1.png", "q.csv:2: expected 3 or 4"),
                                      ("0.png,1.png,maybe,A", "q.csv:2: 'same' must be"),
                                      ("0.png,9.png,1,A", r"q.csv:2: image .*9.png not found")])
def test_errors_name_file_and_line(tmp_path, line, msg):
    _imgs(tmp_path)
    (tmp_path / "q.csv").write_text(f"0.png,1.png,1,A\n{line}\n")
    with pytest.raises(DataError, match=msg):
        read_pairs_csv(tmp_path / "q.csv")


def test_skip_missing_counts(tmp_path):
    _imgs(tmp_path)
    (tmp_path / "q.csv").write_text("0.png,1.png,1,A\n0.png,9.png,0,A\n")
    vs = read_pairs_csv(tmp_path / "q.csv", skip_corrupt=True)
    assert len(vs) == 1 and vs.meta["skipped_pairs"] == 1
