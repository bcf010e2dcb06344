"""``dsct.eval`` (the metrics' maths) and ``dsct.evaluate``'s networks, on CPU, with no downloaded weights.

Every expected value is worked out here by hand or in closed form (or by a second implementation:
pytorch-fid's own functions, torchvision's transforms), never by the function under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dsct import eval as m
from dsct.errors import DSCTError, WeightsNotFound

from eval_weights import ALEXNET_NAME, INCEPTION_NAME, install_random_weights, random_inception_state

pytest.importorskip("pytorch_fid")
lpips_pkg = pytest.importorskip("lpips")
from dsct import benchmark, evaluate  # noqa: E402


# --- SFID / CSFID / floor -----------------------------------------------------------------

def test_sfid_is_zero_at_the_reference_mean_and_the_squared_shift_after_one():
    feats = torch.randn(7, 5, dtype=torch.float64)
    ref = feats.mean(0)
    assert m.sfid(feats, ref) == pytest.approx(0.0, abs=1e-24)
    d = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)  # ‖d‖² = 1 + 4 + 0.25 + 9 = 14.25
    assert m.sfid(feats + d, ref) == pytest.approx(14.25, rel=1e-12)


def test_sfid_uses_the_means_only_not_the_spread():
    ref = torch.zeros(2, dtype=torch.float64)
    tight = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    wide = torch.tensor([[11.0, 0.0], [-9.0, 0.0]])  # same mean (1, 0)
    assert m.sfid(tight, ref) == m.sfid(wide, ref) == pytest.approx(1.0)


def test_csfid_is_the_unweighted_mean_of_class_distances_whatever_the_order_and_sizes():
    ref = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([10.0, 0.0]), "unused": torch.tensor([5.0, 5.0])}
    # class a: 1 output at (3, 4) -> 25; class b: 3 outputs with mean (10, 1) -> 1
    feats = torch.tensor([[3.0, 4.0], [10.0, 0.0], [10.0, 2.0], [10.0, 1.0]])
    labels = ["a", "b", "b", "b"]
    result = m.csfid(feats, labels, ref)
    assert result.value == pytest.approx((25 + 1) / 2)  # not (25 + 3·1)/4: each class counts once
    assert result.per_class == pytest.approx({"a": 25.0, "b": 1.0}) and result.counts == {"a": 1, "b": 3}
    order = [2, 0, 3, 1]
    assert m.csfid(feats[order], [labels[k] for k in order], ref).value == pytest.approx(13.0)
    assert "unused" not in result.per_class  # a reference class without outputs is ignored


def test_csfid_refuses_a_class_the_reference_lacks():
    with pytest.raises(DSCTError, match="no class 'zebra'"):
        m.csfid(torch.zeros(1, 2), ["zebra"], {"a": torch.zeros(2)})


def test_csfid_floor_on_gaussian_draws_is_mean_trace_over_count():
    g = torch.Generator().manual_seed(0)
    dims, trials = 6, 3000
    sigmas = {"a": 1.0, "b": 2.0, "c": 0.5}  # per-dimension std: tr Σ_c = dims · σ²
    counts = {"a": 2, "b": 4, "c": 8}
    means = {c: torch.randn(dims, generator=g, dtype=torch.float64) * 5 for c in sigmas}
    expected = sum(dims * sigmas[c] ** 2 / counts[c] for c in sigmas) / 3  # (12/2 + 24/4 + 1.5/8) / 3
    labels = [c for c in sigmas for _ in range(counts[c])]
    values, floors = [], []
    for _ in range(trials):
        feats = torch.cat([means[c] + sigmas[c] * torch.randn(counts[c], dims, generator=g, dtype=torch.float64)
                           for c in sigmas])
        values.append(m.csfid(feats, labels, means).value)
        floors.append(m.sampling_floor(feats, labels))
    assert np.mean(values) == pytest.approx(expected, rel=0.05)
    assert np.mean(floors) == pytest.approx(expected, rel=0.05)  # the estimate from the outputs' own spread


def test_sampling_floor_needs_two_outputs_in_a_class():
    assert m.sampling_floor(torch.zeros(2, 3), ["a", "b"]) is None
    feats = torch.tensor([[0.0], [2.0], [5.0]])  # class a: var 2, n 2 -> 1; class b alone: left out
    assert m.sampling_floor(feats, ["a", "a", "b"]) == pytest.approx(1.0)


def test_reference_stats_counts_and_means():
    feats = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 8.0]])
    stats = m.reference_stats(feats, ["x", "x", "y"])
    assert stats.counts == {"x": 2, "y": 1}
    assert stats.mean.tolist() == [2.0, 4.0] and stats.class_means["x"].tolist() == [1.0, 2.0]


def test_statistics_summed_in_batches_weigh_each_image_once():
    sums, counts = {}, {}
    m.add_to_sums(sums, counts, torch.tensor([[0.0], [2.0]]), ["a", "a"])
    m.add_to_sums(sums, counts, torch.tensor([[4.0], [9.0]]), ["a", "b"])
    stats = m.stats_from_sums(sums, counts)
    # a: 0, 2, 4 -> mean 2; b: 9; global (0 + 2 + 4 + 9)/4 = 3.75, not the mean of class means (5.5)
    assert stats.counts == {"a": 3, "b": 1} and stats.class_means["a"].item() == 2.0
    assert stats.mean.item() == pytest.approx(3.75)


# --- FID / ArtFID / CLIP ------------------------------------------------------------------

def test_fid_of_identical_sets_is_zero_and_symmetric():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 4, generator=g, dtype=torch.float64)
    b = torch.randn(30, 4, generator=g, dtype=torch.float64) * 2 + 1
    sa, sb = m.mean_and_covariance(a), m.mean_and_covariance(b)
    assert m.frechet_distance(*sa, *sa) == pytest.approx(0.0, abs=1e-9)
    assert m.frechet_distance(*sa, *sb) == pytest.approx(m.frechet_distance(*sb, *sa), rel=1e-9)


def test_fid_closed_form_for_diagonal_gaussians():
    # Σ1 = diag(1, 4), Σ2 = diag(9, 1), μ shift (1, 2): 5 + (1 + 4) + (9 + 1) − 2(√9 + √4) = 10
    mu1, mu2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 1.0]))
    assert m.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(10.0, rel=1e-12)


def test_fid_agrees_with_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance
    g = torch.Generator().manual_seed(2)
    a = torch.randn(50, 8, generator=g, dtype=torch.float64)
    b = torch.randn(60, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    theirs = calculate_frechet_distance(a.mean(0).numpy(), np.cov(a.numpy(), rowvar=False),
                                        b.mean(0).numpy(), np.cov(b.numpy(), rowvar=False))
    assert m.frechet_distance(*m.mean_and_covariance(a), *m.mean_and_covariance(b)) == pytest.approx(theirs, rel=1e-6)


def test_art_fid_formula():
    assert m.art_fid(0.5, 9.0) == pytest.approx(1.5 * 10.0)
    assert m.art_fid(0.0, 0.0) == 1.0


def test_clip_score_and_directional_similarity():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])  # cos 1/√2, then −1 -> clipped at 0
    assert m.clip_score(img, txt).tolist() == pytest.approx([2.5 / 2 ** 0.5, 0.0])
    src, out = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # moved along (−1, 1)
    assert m.directional_similarity(src, out, torch.tensor([[0.0, 0.0]]), torch.tensor([[-2.0, 2.0]])).item() == pytest.approx(1.0)
    assert m.directional_similarity(src, out, torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.0)


# --- Inception preprocessing and features --------------------------------------------------

def test_fid_crop_hand_computed():
    # 1024×512, columns in pairs of 160 / 0: PIL's bilinear halving (a triangle of radius 2 input pixels)
    # weighs each output's own pair 3/8 + 3/8 and the two neighbours 1/8 each: 120 where the pair is
    # 160 (0.75·160), 40 where it is 0 (0.25·160); then the centre 256 of 512 columns, offset 128 (even).
    pattern = np.where((np.arange(1024) // 2) % 2 == 0, 160, 0).astype(np.uint8)
    image = Image.fromarray(np.repeat(np.tile(pattern, (512, 1))[..., None], 3, axis=2))
    x = evaluate.fid_crop(image)
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    row = (x[0, 100] * 255).round().tolist()
    assert row[:4] == [120.0, 40.0, 120.0, 40.0] and set(row) == {120.0, 40.0}
    assert torch.equal(x[0], x[2])


def test_fid_crop_offsets_round_like_torchvision():
    a = np.arange(256 * 261 * 3, dtype=np.uint32).reshape(256, 261, 3) % 251
    x = evaluate.fid_crop(Image.fromarray(a.astype(np.uint8)))  # short side already 256: crop only
    # (261 − 256)/2 = 2.5 -> round half to even = 2: columns 2..257
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(a[:, 2:258].astype(np.uint8)).permute(2, 0, 1))


def test_fid_crop_matches_flexits_torchvision_transform():
    import torchvision.transforms as T
    flexit = T.Compose([T.Resize(256), T.CenterCrop(256), T.ToTensor()])
    rng = np.random.default_rng(0)
    for w, h in ((300, 200), (180, 333), (256, 256), (97, 64)):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(evaluate.fid_crop(image), flexit(image)), (w, h)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    install_random_weights(tmp_path / "torch")
    return tmp_path / "torch"


def test_inception_features_match_pytorch_fids_own_pipeline(torch_home, tmp_path):
    from pytorch_fid.fid_score import get_activations
    net = evaluate.load_inception(torch.device("cpu"))  # pytorch-fid's InceptionV3, its loader reading the cache
    rng = np.random.default_rng(3)
    files = []
    for k in range(3):
        path = tmp_path / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
        files.append(path)
    theirs = get_activations([str(f) for f in files], net, batch_size=2, dims=2048, device="cpu", num_workers=0)
    ours = torch.cat([evaluate.inception_features(net, torch.stack([evaluate.fid_crop(Image.open(f)) for f in files]))])
    assert ours.shape == (3, 2048)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-6)
    assert ours.std(0).max() > 0  # not a constant: the comparison means something


def test_inception_from_a_weights_path_equals_the_cached_file(torch_home, tmp_path):
    path = tmp_path / "copy.pth"
    torch.save(random_inception_state(), path)
    x = torch.rand(2, 3, 256, 256)
    a = evaluate.inception_features(evaluate.load_inception(torch.device("cpu")), x)
    b = evaluate.inception_features(evaluate.load_inception(torch.device("cpu"), path), x)
    assert torch.equal(a, b)
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(DSCTError, match="not a state dict of pytorch-fid's FID Inception"):
        evaluate.load_inception(torch.device("cpu"), path)


def test_missing_weights_name_each_file_its_url_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFound) as e:
        evaluate.load_inception(torch.device("cpu"))
    text = str(e.value)
    assert INCEPTION_NAME in text and "github.com/mseitzer/pytorch-fid/releases" in text
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in text
    with pytest.raises(WeightsNotFound, match=f"{ALEXNET_NAME}.*download.pytorch.org/models/{ALEXNET_NAME}"):
        evaluate.load_lpips(torch.device("cpu"))


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "lpips", None)  # import lpips now raises ImportError
    with pytest.raises(DSCTError, match="pip install -r requirements-eval.txt"):
        evaluate.load_lpips(torch.device("cpu"))


# --- LPIPS and DINO -----------------------------------------------------------------------

def test_lpips_shipped_linear_layers_random_backbone():
    net = lpips_pkg.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    import os
    shipped = torch.load(os.path.join(os.path.dirname(lpips_pkg.__file__), "weights/v0.1/alex.pth"), map_location="cpu", weights_only=True)
    assert torch.equal(net.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert evaluate.lpips_distances(net, a, a).abs().max() == 0
    ab, ba = evaluate.lpips_distances(net, a, b), evaluate.lpips_distances(net, b, a)
    assert torch.allclose(ab, ba, rtol=1e-5) and (ab > 0).all()


def test_lpips_takes_inputs_in_0_1_and_scales_them_to_minus1_1():
    net = lpips_pkg.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        by_hand = net(2 * a - 1, 2 * b - 1).flatten()  # the package's own range, scaled here by hand
    assert torch.allclose(evaluate.lpips_distances(net, a, b), by_hand)


def test_dino_structure_distance_and_self_similarity():
    from dsct.vit import DinoFeatures, build_vit
    dino = DinoFeatures(build_vit("tiny").eval()).eval()
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fx, fy = dino(x), dino(y)
    diagonal = fx.self_sim.diagonal(dim1=-2, dim2=-1)
    assert torch.allclose(diagonal, torch.ones_like(diagonal), atol=1e-5)
    assert m.structure_distance(fx.self_sim, fx.self_sim).tolist() == [0.0, 0.0]
    by_hand = ((fx.self_sim.double() - fy.self_sim.double()) ** 2).mean((1, 2))
    assert torch.allclose(m.structure_distance(fx.self_sim, fy.self_sim), by_hand) and (by_hand > 0).all()
    assert m.cls_cosine(fx.cls, fx.cls).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(DSCTError, match="same token grid"):
        m.structure_distance(fx.self_sim, fx.self_sim[:, :5, :5])


# --- statistics files ---------------------------------------------------------------------

def test_flexit_stats_file_is_read_with_weights_only(tmp_path):
    path = tmp_path / "inception_stats_256.pt"
    mean = torch.arange(4, dtype=torch.float32)
    torch.save({"mean": mean, "std": torch.ones(4), "classwise": {7: {"mean": mean + 1, "std": torch.ones(4)}}}, path)
    stats = benchmark.read_stats(path)
    assert stats.mean.tolist() == [0, 1, 2, 3] and stats.class_means["7"].tolist() == [1, 2, 3, 4] and stats.counts is None

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))
    torch.save({"mean": Evil()}, path)
    with pytest.raises(DSCTError, match="cannot read the statistics file"):
        benchmark.read_stats(path)


def test_own_stats_round_trip(tmp_path):
    stats = m.reference_stats(torch.tensor([[1.0, 1.0], [3.0, 5.0]]), ["n01", "n02"])
    benchmark.save_stats(tmp_path / "s.pt", stats)
    back = benchmark.read_stats(tmp_path / "s.pt")
    assert back.counts == {"n01": 1, "n02": 1} and back.mean.tolist() == [2.0, 3.0]
    assert back.class_means["n02"].tolist() == [3.0, 5.0]
