"""`qfair evaluate --skip-corrupt`: a corrupt image is named without the flag, counted and skipped with it."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from qfair.cli import main
from qfair.models import create_model


def test_corrupt_image_named_then_skipped_and_counted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "img7.png").write_bytes(b"not an image")
    lines = ["path1,path2,same,group"]
    for i in range(0, 8, 2):
        lines += [f"img{i}.png,img{i + 1}.png,{k % 2},{'A' if i < 4 else 'B'}" for k in range(3)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    torch.save(create_model("iresnet18", width=8, num_features=32).state_dict(), tmp_path / "m.pt")
    common = [str(tmp_path / "m.pt"), "--bench", f"csv:{tmp_path / 'pairs.csv'}", "--no-figures",
              "--n-bootstrap", "10", "--no-cache", "--n-folds", "3"]  # 3 pairs per group once img7 is skipped
    assert main(["evaluate", *common, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "img7.png" in err and "--skip-corrupt" in err
    # 10 folds (the default) cannot split group B's 3 remaining pairs: the error says how many can
    assert main(["evaluate", *common[:-2], "--out", str(tmp_path / "c"), "--skip-corrupt"]) == 2
    assert "--n-folds 3" in " ".join(capsys.readouterr().err.split())
    assert main(["evaluate", *common, "--out", str(tmp_path / "b"), "--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 corrupt images and 3 pairs" in out
    assert (tmp_path / "b" / "metrics.json").exists() and not (tmp_path / "a" / "metrics.json").exists()
