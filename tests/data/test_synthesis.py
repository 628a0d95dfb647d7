import torch

from qfair.data.synthesis import (
    SynthSettings,
    _bn_layers,
    bn_statistics_loss,
    iter_synthesize_from_bn,
    synthesize_from_bn,
    write_images,
)


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.PReLU(8),
                            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
                            torch.nn.BatchNorm1d(4))
    # "train" the running statistics on structured data unlike the synthesis' random start:
    # smooth images with strong per-channel offsets
    for bn in (m[1], m[4], m[8]):
        bn.momentum = None  # cumulative average
    m.train()
    with torch.no_grad():
        for _ in range(4):
            base = torch.nn.functional.interpolate(torch.rand(32, 3, 4, 4), size=(32, 32), mode="bilinear")
            m((base * 0.8 + torch.tensor([0.1, -0.5, 0.3]).view(1, 3, 1, 1)).clamp(-1, 1))
    return m.eval()


def _loss(model, x):
    layers = _bn_layers(model)
    stats = []
    hooks = [l.register_forward_pre_hook(lambda mod, inp: stats.append(
        (inp[0].mean([0] if inp[0].dim() == 2 else [0, 2, 3]),
         (inp[0].var([0] if inp[0].dim() == 2 else [0, 2, 3], unbiased=False) + mod.eps).sqrt()))) for l in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return float(bn_statistics_loss(stats, layers))


def test_synthesis_matches_bn_statistics():
    model = _model()
    before = _loss(model, torch.tanh(torch.randn(16, 3, 32, 32) * 0.5))
    log = []
    s = SynthSettings(iters=60, batch_size=16, image_size=32, init_res=16)
    x = torch.cat(list(iter_synthesize_from_bn(model, 16, seed=0, settings=s, log=log)))
    assert len(log) == 1 and log[0][1] < log[0][0]
    after = _loss(model, x)
    assert x.shape == (16, 3, 32, 32) and x.abs().max() <= 1
    assert after < 0.3 * before, (before, after)
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_seeded_and_written(tmp_path):
    model = _model()
    s = SynthSettings(iters=2, batch_size=3)
    a = synthesize_from_bn(model, 5, seed=3, settings=s)
    b = synthesize_from_bn(model, 5, seed=3, settings=s)
    assert torch.equal(a, b) and a.shape[0] == 5
    write_images(torch.cat([a, a]), tmp_path / "out")
    paths = write_images(a, tmp_path / "out")  # a smaller rerun removes its own stale files
    assert len(paths) == 5 and (tmp_path / "out" / "_contact_sheet.png").is_file()
    assert sorted(p.name for p in (tmp_path / "out").glob("synth_*.png")) == [f"synth_{i:05d}.png" for i in range(5)]
    from qfair.data import calibration_batches

    batches = calibration_batches(f"synthetic:{tmp_path / 'out'}", 5, 5)  # the sheet is not an image of the set
    assert batches[0].shape[0] == 5


def test_cache_key_covers_every_weight_not_only_batchnorm():
    from qfair.data.synthesis import _cache_key

    a = _model()
    b = _model()
    b.load_state_dict(a.state_dict())
    s = SynthSettings(iters=2, batch_size=3)
    assert _cache_key(a, 4, 0, s) == _cache_key(b, 4, 0, s)
    conv = next(m for m in b.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight.mul_(1.5)  # same BN statistics, other images: before, the same cache entry
    assert _cache_key(a, 4, 0, s) != _cache_key(b, 4, 0, s)


def test_synthesis_under_no_grad_gives_the_same_images():
    """A caller inside torch.no_grad() (e.g. a calibration helper) gets the images it would get outside it."""
    model = _model()
    s = SynthSettings(iters=3, batch_size=4, image_size=32, init_res=16)
    want = synthesize_from_bn(model, 4, seed=2, settings=s)
    with torch.no_grad():
        got = synthesize_from_bn(model, 4, seed=2, settings=s)
        assert not torch.is_grad_enabled()
    assert torch.equal(got, want)
