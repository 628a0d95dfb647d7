"""kd_finetune (the demo's quick entry point) and fairness-aware distillation inside the loop."""
import torch
from train_tiny import tiny_data, tiny_pair

from qfair.quant import QuantConfig, quantize
from qfair.train import kd_finetune
from qfair.train.losses import kd_mse


class _Split:  # the shape of qfair.data.builtin.TrainSplit
    def __init__(self):
        self.images, self.labels, self.groups = tiny_data(n=64)
        self.group_names = ["a", "b", "c"]


def _kd(student, teacher, x):
    with torch.no_grad():
        return float(kd_mse(student.eval()(x), teacher.eval()(x)).mean())


def test_kd_finetune_moves_a_6bit_student_toward_its_teacher():
    student, teacher = tiny_pair()
    split = _Split()
    x = (split.images.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        teacher.fc.weight.mul_(3.0)  # a teacher the student does not already match
    q = quantize(student, QuantConfig(bits=6), [x[:32]])
    before = _kd(q, teacher, x)
    res = kd_finetune(q, teacher, split, steps=40, lr=0.05, batch_size=16, fair_kd=True)
    after = _kd(q, teacher, x)
    assert res.steps == 40 and after < 0.7 * before
    last = res.history[-1]
    assert set(last["kd_group"]) == {"a", "b", "c"} and abs(sum(last["kd_group_weight"].values()) - 3) < 1e-5
    assert not q.training  # returned in eval mode, ranges frozen


def test_kd_finetune_accepts_a_plain_image_tensor_and_lists_of_batches():
    student, teacher = tiny_pair()
    images, _, _ = tiny_data(n=32)
    assert kd_finetune(student, teacher, images, steps=3, batch_size=8).steps == 3
    x = (images.float() / 255 - 0.5) / 0.5
    assert kd_finetune(student, teacher, [x[:8], x[8:16]], steps=5).steps == 5  # cycles the list


def test_soft_group_labels_from_a_classifier_drive_fair_kd():
    from qfair.train import IndexedSource, fit

    student, teacher = tiny_pair()
    images, _, hard = tiny_data(n=32)
    soft = torch.nn.functional.one_hot(hard, 3).float() * 0.8 + 0.2 / 3  # a classifier's probabilities
    src = IndexedSource(images, None, soft, batch_size=8, seed=0, group_names=["a", "b", "c"])
    res = fit(student, teacher, src, steps=4, lr=0.05, fair_kd=True, fair_gamma=2.0, log_every=1)
    w = res.history[-1]["kd_group_weight"]
    assert set(w) == {"a", "b", "c"} and abs(sum(w.values()) - 3) < 1e-5 and len(set(w.values())) == 3


def test_fit_validates_its_keyword_settings():
    import pytest

    from qfair.train import fit
    from qfair.utils.errors import ConfigError

    student, teacher = tiny_pair()
    with pytest.raises(ConfigError, match="range_update_step"):
        fit(student, teacher, [torch.zeros(2, 3, 16, 16)], steps=1, range_update_step=3)
    with pytest.raises(ConfigError, match="grad_clip"):
        fit(student, teacher, [torch.zeros(2, 3, 16, 16)], steps=1, grad_clip=-1.0)


def test_fit_leaves_the_teacher_trainable_flags_alone_and_names_a_frozen_student():
    import pytest

    from qfair.utils.errors import ConfigError

    student, teacher = tiny_pair()
    images, _, _ = tiny_data(n=16)
    kd_finetune(student, teacher, images, steps=2, batch_size=8)
    assert all(p.requires_grad for p in teacher.parameters())  # the caller may quantize it next
    assert all(p.grad is None for p in teacher.parameters())  # the teacher ran without autograd
    with pytest.raises(ConfigError, match="no trainable parameters"):
        kd_finetune(student.requires_grad_(False), teacher, images, steps=2, batch_size=8)
