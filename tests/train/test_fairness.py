"""Fairness-aware distillation weights against hand computations."""
import torch

from qfair.train.fairness import GroupKDWeighter, group_sums, group_weights


def test_group_weights_hand_formula():
    running = torch.tensor([1.0, 2.0, 4.0, 0.0])
    seen = torch.tensor([True, True, True, False])
    w = group_weights(running, seen, gamma=1.0)
    raw = [1 / (7 / 3), 2 / (7 / 3), 4 / (7 / 3)]
    m = sum(raw) / 3
    assert torch.allclose(w[:3], torch.tensor([r / m for r in raw]))
    assert w[3] == 1.0  # unseen groups: neutral
    w2 = group_weights(running, seen, gamma=2.0)
    raw2 = [1.0, 4.0, 16.0]
    assert torch.allclose(w2[:3], torch.tensor([r / (21 / 3) for r in raw2]))
    assert torch.allclose(group_weights(running, seen, 0.0), torch.ones(4))


def test_group_sums_hard_and_soft():
    per = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s, c = group_sums(per, torch.tensor([0, 1, 0, -1]), 2)
    assert torch.equal(s, torch.tensor([4.0, 2.0])) and torch.equal(c, torch.tensor([2.0, 1.0]))
    soft = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.25, 0.75]])
    s, c = group_sums(per, soft, 2)
    assert torch.allclose(s, torch.tensor([1 + 1 + 1.0, 1 + 3 + 3.0])) and torch.allclose(c, torch.tensor([1.75, 2.25]))


def test_weighter_ema_upweights_the_drifting_group_and_logs_per_group():
    w = GroupKDWeighter(["A", "B"], gamma=1.0, momentum=0.5)
    groups = torch.tensor([0, 0, 1, 1])
    w.update(torch.tensor([1.0, 1.0, 3.0, 3.0]), groups)  # first batch initialises: A 1, B 3
    assert torch.allclose(w.running, torch.tensor([1.0, 3.0]))
    w.update(torch.tensor([3.0, 3.0, 3.0, 3.0]), groups)  # EMA: A 0.5*1+0.5*3 = 2, B 3
    assert torch.allclose(w.running, torch.tensor([2.0, 3.0]))
    gw = w.weights()
    assert torch.allclose(gw, torch.tensor([2 / 2.5, 3 / 2.5]))
    sw = w.sample_weights(torch.tensor([1, 0, -1]))
    assert torch.allclose(sw, torch.tensor([1.2, 0.8, 1.0]))
    soft = w.sample_weights(torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(soft, torch.tensor([1.0]))
    log = w.log_dict()
    assert log["kd_group"] == {"A": 3.0, "B": 3.0} and abs(log["kd_group_weight"]["B"] - 1.2) < 1e-6
    disabled = GroupKDWeighter(["A", "B"], enabled=False)
    disabled.update(torch.tensor([1.0, 5.0]), torch.tensor([0, 1]))
    assert torch.equal(disabled.sample_weights(torch.tensor([0, 1])), torch.ones(2))
    assert disabled.log_dict()["kd_group"] == {"A": 1.0, "B": 5.0}  # still logged


def test_sample_weights_have_mean_one_over_an_imbalanced_batch():
    w = GroupKDWeighter(["A", "B", "C", "D"], gamma=1.0)
    w.update(torch.tensor([1.0, 2.2, 3.0, 8.0]), torch.tensor([0, 1, 2, 3]))  # running losses 1, 2.2, 3, 8
    gw = w.weights()
    batch = torch.tensor([0] * 15 + [1] * 5 + [2] * 3 + [3] * 2)  # 60 / 20 / 12 / 8 %
    sw = w.sample_weights(batch)
    # before: mean 0.575 (group weights have mean 1 over groups), so fair KD also cut the KD weight by 43 %
    assert abs(float(sw.mean()) - 1.0) < 1e-6
    assert abs(float(sw[batch == 3][0] / sw[batch == 0][0]) - float(gw[3] / gw[0])) < 1e-6  # ratios kept

    # under DDP the mean is over the global batch: a rank scales by the all-reduced total and size
    def global_total(t):  # what all_reduce_sum returns when the other rank holds batch[10:]
        return t.copy_(torch.tensor([float(gw[batch].sum()), float(len(batch))]))

    assert torch.allclose(w.sample_weights(batch[:10], reduce=global_total), sw[:10])


def test_weighter_state_round_trip():
    w = GroupKDWeighter(["A", "B", "C"])
    w.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    w2 = GroupKDWeighter(["A", "B", "C"])
    w2.load_state_dict(w.state_dict())
    assert torch.equal(w2.weights(), w.weights()) and torch.equal(w2.seen, w.seen)
