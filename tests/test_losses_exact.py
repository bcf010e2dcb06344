"""dsct.losses at the edges: both sides of the range, the temperature, mixed dtypes, the exact errors.

Values by hand (SPEC §4 formulas written out on small tensors); complements test_losses.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from dsct.losses import (
    NCE_DIAGONAL_FILL,
    clip_direction_loss,
    contrastive_keys_loss,
    identity_loss,
    pixel_l2_loss,
    range_loss,
    semantic_divergence_loss,
    structure_loss,
    style_cls_loss,
    weighted_sum,
)


def test_range_loss_penalises_both_sides_only_outside():
    x0 = torch.tensor([[-1.5, -1.0, 0.3, 1.0], [1.25, 2.0, -3.0, 0.0]]).view(2, 1, 2, 2)
    # mean of squared distances outside [-1, 1]: (0.25 + 0 + 0 + 0)/4, (0.0625 + 1 + 4 + 0)/4
    torch.testing.assert_close(range_loss(x0), torch.tensor([0.0625, 5.0625 / 4]))


def test_contrastive_temperature_is_0_07_by_default_and_scales_the_logits():
    n, d = 4, 4
    keys = torch.eye(n, d).unsqueeze(0)  # orthonormal tokens: cos = 1 on the diagonal, 0 elsewhere

    def by_hand(tau):
        return -1 / tau + math.log(math.exp(1 / tau) + math.exp(NCE_DIAGONAL_FILL / tau) + (n - 1))

    torch.testing.assert_close(contrastive_keys_loss(keys, keys), torch.tensor([by_hand(0.07)]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(contrastive_keys_loss(keys, keys, temperature=0.5), torch.tensor([by_hand(0.5)]),
                               rtol=1e-6, atol=1e-6)
    assert NCE_DIAGONAL_FILL == -10.0


def test_contrastive_positive_is_the_same_token_of_the_source():
    # token i of x_in is token (i+1) mod n of the source: the positives are orthogonal, a negative is equal
    n = 3
    src = torch.eye(n).unsqueeze(0)
    keys = src.roll(-1, dims=1)
    tau = 0.1
    # logits per token: positive cos 0, negatives: [diag → -10, one match cos 1, one cos 0]
    want = -0.0 / tau + math.log(1 + math.exp(-10 / tau) + math.exp(1 / tau) + 1)
    torch.testing.assert_close(contrastive_keys_loss(keys, src, temperature=tau), torch.tensor([want]), rtol=1e-6, atol=1e-6)


def test_contrastive_broadcasts_one_source_over_the_batch_and_checks_shapes():
    g = torch.Generator().manual_seed(0)
    keys, src = torch.randn(3, 5, 4, generator=g), torch.randn(1, 5, 4, generator=g)
    batch = contrastive_keys_loss(keys, src)
    assert batch.shape == (3,)
    for b in range(3):
        torch.testing.assert_close(batch[b:b + 1], contrastive_keys_loss(keys[b:b + 1], src))
    with pytest.raises(ValueError) as err:
        contrastive_keys_loss(keys, torch.randn(1, 5, 3))
    assert str(err.value) == "keys (3, 5, 4) and source keys (1, 5, 3) need the same tokens and width"
    with pytest.raises(ValueError, match=r"^keys \(3, 5, 4\) and source keys \(1, 6, 4\) need"):
        contrastive_keys_loss(keys, torch.randn(1, 6, 4))


def test_contrastive_does_not_change_its_inputs():
    keys = torch.randn(2, 4, 3)
    src = torch.randn(1, 4, 3)
    before = keys.clone(), src.clone()
    contrastive_keys_loss(keys, src)
    assert torch.equal(keys, before[0]) and torch.equal(src, before[1])


def test_mean_losses_are_per_sample_means_by_hand():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]])  # (2, 2, 2)
    b = torch.zeros(1, 2, 2)
    torch.testing.assert_close(structure_loss(a, b), torch.tensor([7.5, 1.0]))  # (1+4+9+16)/4, 4/4
    cls = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    torch.testing.assert_close(style_cls_loss(cls, torch.tensor([[0.0, 1.0]])), torch.tensor([2.5, 2.5]))
    torch.testing.assert_close(semantic_divergence_loss(cls, torch.tensor([[1.0, 1.0]])), torch.tensor([-2.0, -1.0]))
    x = torch.arange(12.0).view(1, 3, 2, 2)
    torch.testing.assert_close(pixel_l2_loss(x, torch.zeros(1, 3, 2, 2)), torch.tensor([sum(v * v for v in range(12)) / 12]))


def test_clip_direction_mixes_dtypes_and_averages_models():
    preds = [torch.tensor([[0.6, 0.8]], dtype=torch.float32), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float32)]
    dirs = [torch.tensor([0.6, 0.8], dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float16)]
    got = clip_direction_loss(preds, dirs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([-0.5]))  # −(1 + 0)/2
    three = clip_direction_loss(preds + [torch.tensor([[0.0, 2.0]])], dirs + [torch.tensor([0.0, 1.0])])
    torch.testing.assert_close(three, torch.tensor([-1.0]))  # −(1 + 0 + 2)/3


def test_clip_direction_errors():
    with pytest.raises(ValueError) as err:
        clip_direction_loss([], [])
    assert str(err.value) == "need one direction per CLIP model, got 0 embeddings and 0 directions"
    with pytest.raises(ValueError) as err:
        clip_direction_loss([torch.ones(1, 2)], [torch.ones(2), torch.ones(2)])
    assert str(err.value) == "need one direction per CLIP model, got 1 embeddings and 2 directions"


def test_identity_loss_by_hand():
    emb = torch.tensor([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    src = torch.tensor([[0.0, 2.0, 0.0]])
    torch.testing.assert_close(identity_loss(emb, src), torch.tensor([1.0, 1.0 - 0.8]))


def test_weighted_sum_errors_and_shapes():
    with pytest.raises(ValueError) as err:
        weighted_sum({}, {"a": 1.0})
    assert str(err.value) == "weighted_sum needs at least one term"
    with pytest.raises(KeyError) as err:
        weighted_sum({"b": torch.ones(2), "a": torch.ones(2), "c": torch.ones(2)}, {"c": 1.0})
    assert err.value.args == ("no weight for loss terms ['a', 'b']",)
    only_zero = weighted_sum({"a": torch.tensor([1.0, 2.0])}, {"a": 0.0})
    assert torch.equal(only_zero, torch.zeros(2)) and only_zero.dtype == torch.float32
    neg = weighted_sum({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([4.0, 8.0])}, {"a": -1.0, "b": 0.5})
    torch.testing.assert_close(neg, torch.tensor([1.0, 2.0]))


def test_weighted_sum_tensor_weights_per_sample():
    terms = {"a": torch.tensor([1.0, float("inf"), 3.0]), "b": torch.tensor([2.0, 2.0, float("nan")])}
    got = weighted_sum(terms, {"a": torch.tensor([2.0, 0.0, -1.0]), "b": torch.tensor([1.0, 3.0, 0.0])})
    torch.testing.assert_close(got, torch.tensor([4.0, 6.0, -3.0]))


def test_weighted_sum_keeps_gradients_of_weighted_terms_only():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    total = weighted_sum({"a": x * x, "b": 3 * x, "c": x ** 3}, {"a": 2.0, "b": torch.tensor([1.0, 0.0]), "c": 0.0})
    (grad,) = torch.autograd.grad(total.sum(), x)
    torch.testing.assert_close(grad, torch.tensor([4.0 * 1 + 3.0, 4.0 * 2]))
