"""dsct.diffusion beyond the reference fixtures: spacings worked out by hand (guided-diffusion's
``space_timesteps`` rules), the β range for other T, the tables the fixtures do not hold, the
exact errors, and the device move of a schedule."""

from __future__ import annotations

import pytest
import torch

from dsct.diffusion import make_schedule, space_timesteps
from dsct.errors import ConfigError

HELP = ("'N' or comma-separated section counts 'N1,N2,…' (each ≥ 1 and ≤ its section's length), "
        "or 'ddimN' where an integer stride gives exactly N steps")


def spacing_error(spacing: str, num_train_steps: int = 1000) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        space_timesteps(num_train_steps, spacing)
    return err.value


@pytest.mark.parametrize("spacing, want", [
    ("1", [0]),  # one step: the start of the section
    ("2", [0, 999]),  # both ends
    ("4", [0, 333, 666, 999]),
    ("5,1", [0, 125, 250, 374, 499, 500]),  # stride 499/4 = 124.75, accumulated then rounded; a section's 1 at its start
    ("1,1,1", [0, 334, 667]),  # 1000 = 334 + 333 + 333: the first section takes the remainder
    (" 3 ", [0, 500, 999]),
])
def test_spacings_by_hand(spacing, want):
    assert space_timesteps(1000, spacing) == want


def test_unequal_sections_give_the_remainder_to_the_first_ones():
    # 10 steps in 3 sections: sizes 4, 3, 3 starting at 0, 4, 7; two steps each at both ends
    assert space_timesteps(10, "2,2,2") == [0, 3, 4, 6, 7, 9]
    assert space_timesteps(11, "2,2,2") == [0, 3, 4, 7, 8, 10]  # sizes 4, 4, 3
    assert space_timesteps(10, "4,3,3") == list(range(10))  # every step of each section


def test_ddim_strides_by_hand():
    assert space_timesteps(1000, "ddim1000") == list(range(1000))  # stride 1
    assert space_timesteps(1000, "ddim500") == list(range(0, 1000, 2))
    assert space_timesteps(1000, "ddim2") == [0, 500]  # the smallest stride with 2 steps
    assert space_timesteps(100, " ddim10 ") == list(range(0, 100, 10))


def test_spacing_errors_in_words():
    err = spacing_error("ddimx")
    assert (err.field, err.value) == ("spacing", "ddimx")
    assert err.allowed == HELP + " (T = 1000)"
    assert spacing_error("ddim1", 10).allowed == HELP + " (T = 10)"  # no stride below T gives one step
    assert spacing_error("ddim0").value == "ddim0"
    assert spacing_error("ddim²").value == "ddim²" and spacing_error("²").value == "²"  # digits that int() refuses
    err = spacing_error("ten")
    assert (err.field, err.value, err.allowed) == ("spacing", "ten", HELP)
    err = spacing_error("10,0")
    assert (err.field, err.value, err.allowed) == ("spacing", "10,0", HELP + " (section 1 has 500 steps)")
    assert space_timesteps(5, "3,2") == [0, 1, 2, 3, 4]  # 5 = 3 + 2: every step of both sections
    assert spacing_error("4,2", 5).allowed == HELP + " (section 0 has 3 steps)"


def test_default_spacing_is_100_steps():
    default, hundred = make_schedule(), make_schedule("100")
    assert default.num_steps == 100
    assert torch.equal(default.timestep_map, hundred.timestep_map) and torch.equal(default.betas, hundred.betas)


def test_linear_betas_scale_with_the_number_of_training_steps():
    # SPEC §2: β from 1e-4·(1000/T) to 0.02·(1000/T); every step kept, so the spaced betas are those
    sched = make_schedule("100", num_train_steps=100)
    assert sched.num_train_steps == 100 and sched.timestep_map.tolist() == list(range(100))
    torch.testing.assert_close(sched.betas[[0, -1]], torch.tensor([1e-3, 0.2], dtype=torch.float64), rtol=1e-12, atol=0)
    full = make_schedule("1000")
    torch.testing.assert_close(full.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(full.betas[1] - full.betas[0], torch.tensor((0.02 - 1e-4) / 999, dtype=torch.float64),
                               rtol=1e-9, atol=0)


def test_the_tables_the_fixtures_do_not_hold():
    sched = make_schedule("10")
    ac = sched.alphas_cumprod
    assert sched.timestep_map.dtype == torch.long
    torch.testing.assert_close(sched.alphas_cumprod_prev, torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]]),
                               rtol=0, atol=0)
    torch.testing.assert_close(sched.sqrt_alphas_cumprod, ac.sqrt(), rtol=1e-15, atol=0)
    torch.testing.assert_close(sched.sqrt_recip_alphas_cumprod, 1 / ac.sqrt(), rtol=1e-14, atol=0)
    torch.testing.assert_close(sched.sqrt_recipm1_alphas_cumprod, (1 / ac - 1).sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(sched.log_betas, sched.betas.log(), rtol=1e-15, atol=0)
    # ᾱ of the kept steps are those of the full process (respacing keeps them, SPEC §2)
    full = make_schedule("1000").alphas_cumprod
    torch.testing.assert_close(ac, full[sched.timestep_map], rtol=1e-12, atol=0)


def test_schedule_to_keeps_every_table_and_its_dtype():
    sched = make_schedule("10")
    moved = sched.to("cpu")
    assert moved.num_train_steps == sched.num_train_steps and moved.num_steps == 10
    for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped", "timestep_map"):
        a, b = getattr(sched, name), getattr(moved, name)
        assert a.dtype == b.dtype and b.device.type == "cpu" and torch.equal(a, b), name
    on = make_schedule("10", num_train_steps=100).to(torch.device("cpu"))
    assert on.num_train_steps == 100
