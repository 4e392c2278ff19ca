"""Preference losses (sppo_ray/training/losses.py), hand-computed on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from sppo_ray.training.losses import LOSSES, dpo_loss, ipo_loss, sppo_loss, sppo_single_loss, sppo_targets

pytestmark = pytest.mark.unit


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


# Shared inputs (binary fractions so the arithmetic is exact):
# a_w = policy_chosen − ref_chosen = [−1 − (−1.5), −2 − (−2)] = [0.5, 0.0]
# a_l = policy_rejected − ref_rejected = [−3 − (−2), −1 − (−1.5)] = [−1.0, 0.5]
PC, PR, RC, RR = t(-1.0, -2.0), t(-3.0, -1.0), t(-1.5, -2.0), t(-2.0, -1.5)


def test_sppo_targets():
    # beta = 0.25 (η = 4): t_w = 4·(0.75 − ½) = 1, 4·(0.625 − ½) = 0.5 ; t_l = 4·(0.25 − ½) = −1, 4·(½ − ½) = 0
    t_w, t_l = sppo_targets(t(0.75, 0.625), t(0.25, 0.5), 0.25)
    torch.testing.assert_close(t_w, t(1.0, 0.5))
    torch.testing.assert_close(t_l, t(-1.0, 0.0))


def test_sppo_loss_hand_computed():
    loss = sppo_loss(PC, PR, RC, RR, t(0.75, 0.625), t(0.25, 0.5), 0.25)
    # targets t_w = [1, 0.5], t_l = [−1, 0]
    # row 0: ½[(0.5 − 1)² + (−1 − (−1))²] = ½[0.25 + 0] = 0.125
    # row 1: ½[(0 − 0.5)² + (0.5 − 0)²] = ½[0.25 + 0.25] = 0.25
    torch.testing.assert_close(loss, t(0.125, 0.25))


def test_sppo_loss_policy_equals_reference_is_mean_squared_target():
    # a_w = a_l = 0 -> loss = ½(t_w² + t_l²); t_w = [1, 0.5], t_l = [−1, 0] -> [½(1+1), ½(0.25+0)] = [1.0, 0.125]
    loss = sppo_loss(RC, RR, RC, RR, t(0.75, 0.625), t(0.25, 0.5), 0.25)
    torch.testing.assert_close(loss, t(1.0, 0.125))
    # also with the paper's beta = 0.001: t_w = (0.6 − ½)/0.001 = 100, t_l = (0.4 − ½)/0.001 = −100 -> ½(1e4 + 1e4) = 1e4
    loss = sppo_loss(RC[:1], RR[:1], RC[:1], RR[:1], t(0.6), t(0.4), 0.001)
    assert loss.item() == pytest.approx(1.0e4, rel=1e-9)


def test_sppo_single_loss_hand_computed():
    loss = sppo_single_loss(PC, PR, RC, RR, t(0.75, 0.625), 0.25)
    # target = 4·(p − ½) = [1, 0.5]
    # row 0: ½[(0.5 − 1)² + (−1 + 1)²] = ½·0.25 = 0.125
    # row 1: ½[(0 − 0.5)² + (0.5 + 0.5)²] = ½[0.25 + 1] = 0.625
    torch.testing.assert_close(loss, t(0.125, 0.625))


def test_dpo_loss_hand_computed():
    loss = dpo_loss(PC, PR, RC, RR, 2.0)
    # margin = a_w − a_l = [0.5 + 1, 0 − 0.5] = [1.5, −0.5]; beta·margin = [3, −1]
    # −log σ(3) = log(1 + e^−3) = 0.04858735157374196 ; −log σ(−1) = log(1 + e) = 1.3132616875182228
    torch.testing.assert_close(loss, t(math.log1p(math.exp(-3)), math.log1p(math.e)))
    torch.testing.assert_close(loss, t(0.04858735157374196, 1.3132616875182228))


def test_ipo_loss_hand_computed():
    loss = ipo_loss(PC, PR, RC, RR, 0.25)
    # 1/(2·beta) = 2 ; margin = [1.5, −0.5] -> (1.5 − 2)² = 0.25, (−0.5 − 2)² = 6.25
    torch.testing.assert_close(loss, t(0.25, 6.25))


def test_sppo_gradient_direction():
    chosen = RC.clone().requires_grad_(True)
    rejected = RR.clone().requires_grad_(True)
    p_win, p_lose = t(0.75, 0.625), t(0.25, 0.375)
    loss = sppo_loss(chosen, rejected, RC, RR, p_win, p_lose, 0.25).sum()
    loss.backward()
    # ∂/∂chosen = a_w − t_w = 0 − 4(p_win − ½) = [−1, −0.5]; ∂/∂rejected = a_l − t_l = 0 − 4(p_lose − ½) = [1, 0.5]
    torch.testing.assert_close(chosen.grad, t(-1.0, -0.5))
    torch.testing.assert_close(rejected.grad, t(1.0, 0.5))
    # a gradient-descent step raises the chosen log-prob (p_win > ½) and lowers the rejected one (p_lose < ½)
    lr = 0.1
    with torch.no_grad():
        new_chosen = chosen - lr * chosen.grad
        new_rejected = rejected - lr * rejected.grad
    assert torch.all(new_chosen > RC)
    assert torch.all(new_rejected < RR)
    # and the loss goes down after the step
    after = sppo_loss(new_chosen, new_rejected, RC, RR, p_win, p_lose, 0.25).sum()
    assert after.item() < loss.item()


def test_sppo_single_and_dpo_gradient_direction():
    for fn, extra in ((sppo_single_loss, (t(0.75, 0.625), 0.25)), (dpo_loss, (0.1,)), (ipo_loss, (0.1,))):
        chosen = RC.clone().requires_grad_(True)
        rejected = RR.clone().requires_grad_(True)
        fn(chosen, rejected, RC, RR, *extra).sum().backward()
        assert torch.all(chosen.grad < 0), fn.__name__  # descent increases the chosen log-prob
        assert torch.all(rejected.grad > 0), fn.__name__  # descent decreases the rejected log-prob


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shapes_b_in_b_out(name):
    b = 3
    g = torch.Generator().manual_seed(0)
    logps = [-torch.rand(b, generator=g) * 10 for _ in range(4)]
    if name == "sppo":
        extra = (torch.rand(b, generator=g), torch.rand(b, generator=g), 0.1)
    elif name == "sppo_single":
        extra = (torch.rand(b, generator=g), 0.1)
    else:
        extra = (0.1,)
    out = LOSSES[name](*logps, *extra)
    assert out.shape == (b,)
    assert torch.all(out >= 0)
