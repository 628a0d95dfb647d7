"""Fine-tuning a quantized student: ranges track for N steps then freeze; resume mid-tracking; LSQ."""
import pytest
import torch
from train_tiny import tiny_data, tiny_pair

from qfair.quant import QuantConfig, iter_quantizers, quantize
from qfair.quant.math import compute_qparams
from qfair.train import IndexedSource, fit
from qfair.train import ranges as R


def _quantized(bits=6):
    student, teacher = tiny_pair()
    images, _, _ = tiny_data()
    x = (images.float() / 255 - 0.5) / 0.5
    return quantize(student, QuantConfig(bits=bits), [x[:16], x[16:32]]), teacher


def _source():
    images, labels, groups = tiny_data()
    return IndexedSource(images, labels, groups, batch_size=8, seed=2, group_names=["a", "b", "c"])


def test_ranges_track_for_n_steps_then_freeze():
    q, teacher = _quantized()
    aq = q.act.output_quantizer
    seen = {"lo": None, "hi": None}
    lo0 = (aq.qmin - aq.zero_point) * aq.scale  # calibrated range: tracking starts from it
    hi0 = (aq.qmax - aq.zero_point) * aq.scale
    seen["lo"], seen["hi"] = lo0.clone(), hi0.clone()
    step_box = {"step": 0}

    def watch(mod, args):  # independent record of what the quantizer's input was
        if step_box["step"] < 3 and mod.training:
            x = args[0].detach()
            seen["lo"] = torch.minimum(seen["lo"], x.min())
            seen["hi"] = torch.maximum(seen["hi"], x.max())

    h = aq.register_forward_pre_hook(watch)
    scales = []

    def after(step, rec):
        step_box["step"] = step
        scales.append(float(aq.scale))

    fit(q, teacher, _source(), steps=6, lr=0.05, range_update_steps=3, callbacks=[after])
    h.remove()
    s, _ = compute_qparams(seen["lo"], seen["hi"], aq.qmin, aq.qmax, aq.symmetric)
    assert scales[2] == pytest.approx(float(s), rel=1e-6)
    assert scales[0] <= scales[1] <= scales[2]  # running min/max only widens
    assert scales[3] == scales[4] == scales[5] == scales[2]  # frozen after 3 steps
    assert not aq.observer_enabled and aq.fake_quant_enabled


@pytest.mark.parametrize("stop_at", [3, 7], ids=["during-tracking", "after-freeze"])
def test_resume_restores_observer_ranges_and_frozen_scales(tmp_path, stop_at):
    torch.set_num_threads(1)

    class Stop(Exception):
        pass

    def stop(step, rec):
        if step == stop_at:
            raise Stop

    kw = dict(steps=8, lr=0.05, range_update_steps=5, checkpoint_every=2)
    ref, teacher = _quantized()
    fit(ref, teacher, _source(), out_dir=tmp_path / "ref", **kw)
    cut, teacher = _quantized()
    with pytest.raises(Stop):
        fit(cut, teacher, _source(), out_dir=tmp_path / "cut", callbacks=[stop], **kw)
    fresh, teacher = _quantized()
    fresh.act.output_quantizer.observer.reset()  # a new process: nothing observed yet
    fit(fresh, teacher, _source(), out_dir=tmp_path / "cut", resume=True, **kw)
    for (k, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_learnable_scales_are_trained_without_weight_decay():
    q, teacher = _quantized()
    fit(q, teacher, _source(), steps=4, lr=0.05, range_update_steps=1, learnable_scales=True, scale_lr_mult=1.0)
    aq = q.act.output_quantizer
    assert isinstance(aq.scale, torch.nn.Parameter) and aq.scale.grad is not None
    assert float(aq.scale.grad.abs()) > 0
    qs = [q_ for _, q_ in iter_quantizers(q)]
    assert all(q_.lsq for q_ in qs)


def test_set_range_tracking_seeds_an_empty_observer_from_the_calibrated_range():
    q, _ = _quantized()
    aq = q.act.output_quantizer
    aq.observer.reset()
    before = aq.scale.clone()
    R.set_range_tracking(q, True)
    lo, hi = aq.observer.compute_range()
    s, _ = compute_qparams(lo, hi, aq.qmin, aq.qmax, aq.symmetric)
    assert torch.allclose(s, before, rtol=1e-6)
    R.set_range_tracking(q, False)
    assert not aq.observer_enabled
