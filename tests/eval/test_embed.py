"""Embedding: flip TTA, each distinct image once, NaN images named, bad pairs, cache, ONNX Runtime."""

import numpy as np
import pytest
import torch

from qfair.eval import BACKENDS, embed, make_backend
from qfair.eval.backends import Backend, TorchBackend
from qfair.utils.errors import DataError, QfairError

from .conftest import TinyNet, make_vset


def _by_hand(net, vset, flip=True):
    x = (vset.images.uint8().float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        f = net(x) + (net(torch.flip(x, dims=[3])) if flip else 0)
    f = f.double().numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.mark.parametrize("flip", [True, False])
def test_flip_tta_matches_hand_computation(tiny_net, tiny_vset, flip):
    emb = embed(tiny_net, tiny_vset, flip=flip, batch_size=5)
    used = np.unique(tiny_vset.pairs)
    assert emb.dtype == np.float32 and emb.shape == (24, 8)
    np.testing.assert_allclose(emb[used], _by_hand(tiny_net, tiny_vset, flip)[used], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb[used], axis=1), 1.0, rtol=1e-6)


def test_each_distinct_image_once_and_model_state_restored(tiny_net, tiny_vset):
    seen = []
    tiny_net.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    tiny_net.train()
    embed(tiny_net, tiny_vset, flip=True, batch_size=7)
    assert sum(seen) == 2 * len(np.unique(tiny_vset.pairs))  # image + mirror, once each
    assert tiny_net.training  # training mode restored after the pass


def test_only_images_used_by_pairs_are_embedded(tiny_net):
    vset = make_vset(n_images=30, n_pairs=10)
    vset.pairs = vset.pairs % 12  # images 12..29 unused
    emb = embed(tiny_net, vset, flip=False)
    assert np.isnan(emb[12:]).all() and np.isfinite(emb[np.unique(vset.pairs)]).all()


def test_nan_embeddings_name_the_images(tiny_vset):
    class Poisoned(torch.nn.Module):
        def forward(self, x):
            out = x.mean(dim=(2, 3))
            out[x[:, 0, 0, 0] > 0.9] = float("nan")  # images whose first pixel is bright
            return out

    imgs = tiny_vset.images.uint8()  # the in-memory tensor itself
    imgs[:, 0, 0, 0] = 0
    imgs[3, 0, 0, 0] = 255
    tiny_vset.pairs[0] = [3, 3]
    with pytest.raises(DataError, match=r"1 image\(s\): image #3 \(img_003.png\) \(pairs \[0"):
        embed(Poisoned(), tiny_vset, flip=False)


def test_pairs_referring_to_missing_images(tiny_net):
    vset = make_vset()
    vset.pairs = vset.pairs.copy()
    vset.pairs[5] = [2, 99]
    with pytest.raises(DataError, match=r"refer to images that do not exist.*24 images.*pair 5 -> images \[2, 99\]"):
        embed(tiny_net, vset)


def test_cache_roundtrip_and_keys(tiny_net, tiny_vset, tmp_path):
    calls = []
    tiny_net.register_forward_hook(lambda m, i, o: calls.append(1))
    a = embed(tiny_net, tiny_vset, cache_dir=tmp_path)
    n = len(calls)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0], allow_pickle=False), a, equal_nan=True)
    b = embed(tiny_net, tiny_vset, cache_dir=tmp_path)
    assert len(calls) == n and np.array_equal(a, b, equal_nan=True)  # served from the cache
    embed(tiny_net, tiny_vset, cache_dir=tmp_path, flip=False)
    with torch.no_grad():
        tiny_net[2].weight.add_(0.1)
    embed(tiny_net, tiny_vset, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3  # flip and weights are part of the key
    files[0].write_bytes(b"garbage")  # a corrupt cache file is recomputed, not trusted
    embed(TinyNet.make(), tiny_vset, cache_dir=tmp_path)


def _onnx_of(net, path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = net[2].weight.detach().numpy().T.astype(np.float32)  # (588, 8)
    nodes = [helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "W"], ["embedding"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])],
                              initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # README references [8]: onnxruntime 1.31 reads IR <= 13
    onnx.save(model, str(path))
    return path


def test_onnxruntime_backend_matches_torch(tiny_net, tiny_vset, tmp_path):
    pytest.importorskip("onnxruntime")
    path = _onnx_of(tiny_net, tmp_path / "model.onnx")
    be = make_backend(path)
    assert be.name == "onnxruntime" and be.fingerprint() == make_backend(str(path)).fingerprint()
    np.testing.assert_allclose(embed(be, tiny_vset), embed(tiny_net, tiny_vset), atol=1e-5)


def test_registry_is_extensible(tiny_vset):
    @BACKENDS.register("constant-test")
    class ConstantBackend(Backend):
        name = "constant-test"

        def __init__(self, obj):
            self.obj = obj

        @classmethod
        def accepts(cls, obj):
            return obj == "CONST"

        def embed_batch(self, x):
            return np.ones((x.shape[0], 4), np.float32)

        def fingerprint(self):
            return "const"

    try:
        emb = embed("CONST", tiny_vset, flip=True)
        np.testing.assert_allclose(emb[np.unique(tiny_vset.pairs)], 0.5)
        assert isinstance(make_backend(TinyNet.make()), TorchBackend)
        with pytest.raises(QfairError, match="no embedding backend accepts"):
            make_backend(12345)
    finally:
        BACKENDS._items.pop("constant-test")


def test_plain_tensor_store_without_batches(tiny_net):
    vset = make_vset(store=False)
    imgs = make_vset(store=False).images

    class Store:  # only len() and __getitem__
        def __len__(self):
            return len(imgs)

        def __getitem__(self, i):
            return imgs[i]

    vset.images = Store()
    ref = make_vset()
    np.testing.assert_allclose(embed(tiny_net, vset), embed(tiny_net, ref), atol=1e-6)


def test_a_benchmark_that_cannot_be_evaluated_fails_before_embedding(tiny_net, monkeypatch):
    import importlib

    from qfair.eval import evaluate

    ev = importlib.import_module("qfair.eval.evaluate")  # the module (the package exports a function of that name)
    def no_embedding(*a, **k):
        raise AssertionError("embedded a benchmark that cannot be evaluated")

    monkeypatch.setattr(ev, "embed", no_embedding)
    vs = make_vset(n_pairs=40, groups=("A", "B"))
    vs.groups = vs.groups.copy()
    vs.groups[-1] = "C"  # one pair of group C
    with pytest.raises(DataError, match=r"group 'C' has 1 pair\(s\).*--groups A B"):
        evaluate(tiny_net, vs, n_bootstrap=0)
    vs = make_vset(n_pairs=40)
    vs.issame = np.ones_like(vs.issame)
    with pytest.raises(DataError, match="no impostor pairs"):
        evaluate(tiny_net, vs, n_bootstrap=0)


def test_fingerprint_of_a_lazy_set_covers_every_part_of_each_source(tmp_path):
    from types import SimpleNamespace

    from qfair.eval.embed import benchmark_fingerprint

    img = tmp_path / "a.jpg"
    img.write_bytes(b"x")

    def vset(shift):  # 40 RFW-like sources (image path, landmarks, landmark file); 16 are sampled and decoded
        lmks = [np.full((5, 2), 50.0) for _ in range(40)]
        lmks[7] = lmks[7] + shift  # one re-aligned face, not among the decoded samples
        ds = SimpleNamespace(sources=[(str(img), m, str(img)) for m in lmks])
        images = type("Store", (), {"__len__": lambda self: 40, "__getitem__": lambda self, i: np.zeros(3),
                                    "_ds": ds})()
        return SimpleNamespace(name="rfw", images=images, pairs=np.array([[0, 1]]), issame=np.array([True]))

    assert benchmark_fingerprint(vset(0.0)) == benchmark_fingerprint(vset(0.0))
    assert benchmark_fingerprint(vset(0.0)) != benchmark_fingerprint(vset(12.0))  # before: equal (stale cache)
