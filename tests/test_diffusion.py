"""dsct.diffusion: schedules and posterior against guided-diffusion, spacing errors, re-noising."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dsct.diffusion import (
    MeanVar,
    extract,
    make_schedule,
    model_timesteps,
    p_mean_variance,
    q_sample,
    renoise,
    space_timesteps,
)
from dsct.errors import ConfigError

SPACINGS = ["100", "200", "50", "ddim25"]
SCHEDULE_ARRAYS = [
    "betas",
    "alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
]


@pytest.fixture(scope="module")
def ref(reference_dir) -> dict[str, torch.Tensor]:
    return load_file(reference_dir / "diffusion_schedules.safetensors")


@pytest.mark.parametrize("spacing", SPACINGS)
def test_schedule_matches_reference(ref, spacing):
    sched = make_schedule(spacing)
    assert sched.num_steps == ref[f"{spacing}.betas"].shape[0]
    assert torch.equal(sched.timestep_map, ref[f"{spacing}.timestep_map"])
    for name in SCHEDULE_ARRAYS:
        ours, theirs = getattr(sched, name), ref[f"{spacing}.{name}"]
        assert ours.dtype == torch.float64, name
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0, msg=name)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_p_mean_variance_and_q_sample_match_reference(ref, spacing):
    sched = make_schedule(spacing)
    r = lambda k: ref[f"{spacing}.{k}"]  # noqa: E731
    i = r("pmv.t_index")
    out = p_mean_variance(sched, r("pmv.model_out"), r("pmv.x_t"), i)
    for ours, key in [
        (out.mean, "pmv.mean"),
        (out.variance, "pmv.variance"),
        (out.log_variance, "pmv.log_variance"),
        (out.x0_pred, "pmv.pred_xstart"),
        (model_timesteps(sched, i), "pmv.t_model"),
        (q_sample(sched, r("q.x0"), i, r("q.noise")), "q.x_t"),
    ]:
        assert ours.dtype == r(key).dtype, key
        torch.testing.assert_close(ours, r(key), rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(out.eps, r("pmv.model_out")[:, :3], rtol=0, atol=0)


def test_ddim_uses_an_integer_stride():
    assert make_schedule("ddim25").timestep_map.tolist() == list(range(0, 1000, 40))
    assert make_schedule("ddim7").num_steps == 7


def test_section_counts():
    steps = space_timesteps(300, "10,15,20")
    assert len(steps) == 45
    assert [sum(lo <= s < lo + 100 for s in steps) for lo in (0, 100, 200)] == [10, 15, 20]
    assert steps[:2] == [0, 11] and steps[9] == 99  # evenly spread, ends included
    assert space_timesteps(1000, "1000") == list(range(1000))


@pytest.mark.parametrize(
    ("spacing", "num_train_steps"),
    [
        ("0", 1000), ("abc", 1000), ("2000", 1000), ("-5", 1000), ("10,0", 1000),
        ("ddim7", 10), ("ddim600", 1000), ("ddim", 1000), ("ddimx", 1000),
    ],
)
def test_bad_spacing_is_a_config_error(spacing, num_train_steps):
    with pytest.raises(ConfigError, match="spacing") as info:
        make_schedule(spacing, num_train_steps=num_train_steps)
    assert info.value.field == "spacing"


def test_model_timesteps_are_original_indices_as_float():
    sched = make_schedule("100")
    t = model_timesteps(sched, torch.tensor([0, 1, 99]))
    assert t.dtype == torch.float32 and t.tolist() == [0.0, 10.0, 999.0]  # "100" spreads 0..999 evenly
    # guided-diffusion's rescale_timesteps maps T training steps onto the model's 0..1000 range.
    assert model_timesteps(make_schedule("10", num_train_steps=100), torch.tensor([9])).tolist() == [990.0]


def test_extract_gathers_per_sample_and_casts():
    sched = make_schedule("100")
    x = torch.zeros(3, 2, 4, 4, dtype=torch.bfloat16)
    c = extract(sched.betas, torch.tensor([0, 50, 99]), x)
    assert c.shape == (3, 1, 1, 1) and c.dtype == torch.bfloat16
    assert c.flatten().tolist() == sched.betas[[0, 50, 99]].to(torch.bfloat16).tolist()


def test_samples_at_different_steps_equal_separate_calls():
    sched = make_schedule("100")
    model_out, x_t, i = torch.randn(2, 6, 8, 8), torch.randn(2, 3, 8, 8), torch.tensor([70, 3])
    both = p_mean_variance(sched, model_out, x_t, i)
    for b in range(2):
        one = p_mean_variance(sched, model_out[b : b + 1], x_t[b : b + 1], i[b : b + 1])
        for name in MeanVar._fields:
            torch.testing.assert_close(getattr(both, name)[b : b + 1], getattr(one, name), rtol=0, atol=0)


@pytest.mark.parametrize("step", [1, 50, 99])
def test_renoise_has_the_marginal_of_q_at_i(step):
    """q_sample at i-1 then renoise at i must give x_i ~ N(sqrt(ᾱ_i)·x0, 1-ᾱ_i)."""
    sched = make_schedule("100")
    gen = torch.Generator().manual_seed(step)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.5)
    i = torch.full((n,), step)
    x_prev = q_sample(sched, x0, i - 1, torch.randn(x0.shape, generator=gen))
    x_i = renoise(sched, x_prev, i, torch.randn(x0.shape, generator=gen)).double()
    ac = sched.alphas_cumprod[step]
    std = (1 - ac).sqrt()
    assert abs(x_i.mean() - 0.5 * ac.sqrt()) < 5 * std / n**0.5
    assert abs(x_i.var() / (1 - ac) - 1) < 0.02
    # The reference's β_{i-1} gives a different marginal; at i = 1 the test above would catch it.
    if step == 1:
        b = sched.betas[0]
        flawed = (1 - b) * (1 - sched.alphas_cumprod[0]) + b
        assert abs(flawed / (1 - ac) - 1) > 0.5
