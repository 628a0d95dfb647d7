import numpy as np
import pytest
import torch

from qfair.data import calibration_batches
from qfair.data.mixing import MixedSource, balanced_identity_sample, identity_soft_labels, parse_mix
from qfair.utils.errors import DataError


class _DS:
    def __init__(self, n, tag, labelled=True):
        self.n, self.tag, self.labelled = n, tag, labelled
        self.targets = np.arange(n) % 5 if labelled else None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (self.tag, i), (int(self.targets[i]) if self.labelled else -1)


def test_balanced_hard_labels():
    groups = np.array(["A"] * 10 + ["B"] * 3 + ["C"] * 5)
    keep = balanced_identity_sample(groups, seed=0)
    assert np.bincount(np.searchsorted(["A", "B", "C"], groups[keep])).tolist() == [3, 3, 3]
    assert np.array_equal(keep, balanced_identity_sample(groups, seed=0))
    assert not np.array_equal(keep, balanced_identity_sample(groups, seed=1))
    with pytest.raises(DataError, match="fewer than 4"):
        balanced_identity_sample(groups, per_group=4)


def test_balanced_soft_labels_keep_most_representative():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    # group 0: ids 0 (0.9), 2 (0.8), 1 (0.6); group 1: ids 4 (0.9), 3 (0.7) -> 2 per group
    assert balanced_identity_sample(p).tolist() == [0, 2, 3, 4]
    assert balanced_identity_sample(p, per_group=1).tolist() == [0, 4]


def test_mixed_source_ratio_and_labels():
    real, syn = _DS(100, "r"), _DS(50, "s", labelled=False)
    mix = MixedSource([real, syn], [0.7, 0.3], size=20, seed=0)
    assert len(mix) == 20 and mix.counts.tolist() == [14, 6]
    tags = [mix[i][0][0] for i in range(20)]
    assert tags.count("r") == 14 and tags.count("s") == 6
    labels = [mix[i][1] for i in range(20)]
    assert all(l == -1 for t, l in zip(tags, labels) if t == "s")
    again = MixedSource([real, syn], [0.7, 0.3], size=20, seed=0)
    assert again.items == mix.items
    only = MixedSource([real, _DS(10, "q")], [1, 1], size=10, seed=0, indices=[[3, 4], None])
    assert {mix_i[1] for (k, mix_i) in [(k, (k, j)) for k, j in only.items] if k == 0} <= {3, 4}
    assert only[next(i for i, (k, _) in enumerate(only.items) if k == 1)][1] >= 5  # offset past real's 5 labels


def test_parse_and_mix_calibration():
    assert parse_mix("real:/a@0.7|synthetic@0.3") == [("real:/a", 0.7), ("synthetic", 0.3)]
    with pytest.raises(DataError):
        parse_mix("real:/a")
    b = calibration_batches("mix:builtin@0.75|builtin-synthetic@0.25", 8, 3, seed=0)
    assert [len(x) for x in b] == [3, 3, 2] and b[0].dtype == torch.float32


def test_identity_soft_labels_average_images():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    ids, p = identity_soft_labels(probs, ["b", "b", "a"])
    assert ids.tolist() == ["a", "b"] and np.allclose(p, [[0.1, 0.9], [0.7, 0.3]])
    assert balanced_identity_sample(p, per_group=1).tolist() == [0, 1]


def test_recordio_sources_keep_distinct_identities(tmp_path):
    """Two labelled .rec sources (labels 0..2 each): the second's identities are offset past the first's."""
    from qfair.data import RecordIO, write_recordio

    img = np.zeros((8, 8, 3), np.uint8)
    for name in ("real", "synth"):
        write_recordio(tmp_path / f"{name}.rec", [(img, i % 3) for i in range(6)], fmt="png")
    a, b = RecordIO(tmp_path / "real.rec"), RecordIO(tmp_path / "synth.rec")
    mix = MixedSource([a, b], [0.5, 0.5], size=12, seed=0)
    assert mix.offsets.tolist() == [0, 3]
    by_source = {k: {mix[i][1] for i in range(len(mix)) if mix.source_of[i] == k} for k in (0, 1)}
    assert by_source == {0: {0, 1, 2}, 1: {3, 4, 5}}


def test_a_label_past_the_counted_range_is_an_error_not_a_merge():
    """A labelled source whose label count was not known (nor given) would share ids with the next source."""
    class Opaque:  # labelled, but says nothing about how many labels it has
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return ("o", i), i

    mix = MixedSource([Opaque(), _DS(4, "b")], [0.5, 0.5], size=8, seed=0)
    first = next(i for i in range(len(mix)) if mix.source_of[i] == 0)
    with pytest.raises(DataError, match="source 0 .*gave label .*pass num_labels="):
        mix[first]
    fixed = MixedSource([Opaque(), _DS(4, "b")], [0.5, 0.5], size=8, seed=0, num_labels=[4, 5])
    assert {fixed[i][1] for i in range(8) if fixed.source_of[i] == 1} <= {4, 5, 6, 7, 8}
