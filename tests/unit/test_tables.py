"""K×K preference tables, win rates and selection (sppo_ray/judging/tables.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sppo_ray.judging.tables import (
    debiased_table,
    reference_scores,
    reference_table,
    select,
    sigmoid,
    win_rates,
)

pytestmark = pytest.mark.unit


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# A 3x3 logits matrix used by several tests (row i, column j: logit that i beats j when shown first).
L3 = np.array([[0.0, 1.0, 3.0], [-1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])


def test_sigmoid_values_and_extremes():
    # σ(0) = ½, σ(2) = 1/(1+e^-2) = 0.8807970779778823, σ(-2) = 0.11920292202211755
    np.testing.assert_allclose(sigmoid(np.array([0.0, 2.0, -2.0])), [0.5, 0.8807970779778823, 0.11920292202211755])
    # No overflow for large magnitudes: σ(1000) = 1, σ(-1000) = 0
    with np.errstate(over="raise"):
        np.testing.assert_allclose(sigmoid(np.array([1000.0, -1000.0])), [1.0, 0.0])


def test_debiased_2x2_hand_computed():
    p = debiased_table(np.array([[0.0, 2.0], [-1.0, 0.0]]))
    # P01 = (σ(l01) + σ(−l10)) / 2 = (σ(2) + σ(1)) / 2 = (0.8807970779778823 + 0.7310585786300049) / 2
    p01 = (0.8807970779778823 + 0.7310585786300049) / 2  # = 0.8059278283039436
    # P10 = (σ(−1) + σ(−2)) / 2 = (0.2689414213699951 + 0.11920292202211755) / 2 = 0.19407217169605633
    p10 = (0.2689414213699951 + 0.11920292202211755) / 2
    np.testing.assert_allclose(p, [[0.5, p01], [p10, 0.5]], rtol=0, atol=1e-12)


def test_debiased_3x3_hand_computed():
    p = debiased_table(L3)
    # P01 = (σ(1) + σ(−(−1)))/2 = σ(1) = 0.7310585786300049
    # P02 = (σ(3) + σ(−0))/2 = (0.9525741268224334 + 0.5)/2 = 0.7262870634112167
    # P12 = (σ(0) + σ(−2))/2 = (0.5 + 0.11920292202211755)/2 = 0.30960146101105877
    p01, p02, p12 = 0.7310585786300049, 0.7262870634112167, 0.30960146101105877
    expected = [[0.5, p01, p02], [1 - p01, 0.5, p12], [1 - p02, 1 - p12, 0.5]]
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-12)
    # P21 directly: (σ(2) + σ(−0))/2 = (0.8807970779778823 + 0.5)/2 = 0.6903985389889412
    assert p[2, 1] == pytest.approx(0.6903985389889412, abs=1e-12)


def test_debiased_diagonal_half_and_antisymmetric():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 5)) * 3
    np.fill_diagonal(logits, 7.0)  # a nonzero diagonal must not leak into P_ii
    p = debiased_table(logits)
    np.testing.assert_array_equal(np.diag(p), [0.5] * 5)
    np.testing.assert_allclose(p + p.T, np.ones((5, 5)), rtol=0, atol=1e-12)


def test_debiased_batch_dims():
    a = np.array([[0.0, 2.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    logits = np.stack([L3, a])  # shape [2, 3, 3]
    p = debiased_table(logits)
    assert p.shape == (2, 3, 3)
    np.testing.assert_allclose(p[0], debiased_table(L3))
    np.testing.assert_allclose(p[1], debiased_table(a))
    # second matrix: P01 = (σ(2) + σ(1))/2 = 0.8059278283039436; P02 = (σ(0)+σ(0))/2 = ½
    assert p[1, 0, 1] == pytest.approx(0.8059278283039436, abs=1e-12)
    assert p[1, 0, 2] == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_array_equal(p[:, [0, 1, 2], [0, 1, 2]], np.full((2, 3), 0.5))
    np.testing.assert_allclose(p + np.swapaxes(p, -1, -2), np.ones((2, 3, 3)), atol=1e-12)


def test_reference_scores_and_table_hand_computed():
    # D = L − Lᵀ = [[0, 2, 3], [−2, 0, −2], [−3, 2, 0]]; s_i = row mean over K=3 (zero diagonal included)
    # s0 = (0+2+3)/3 = 5/3, s1 = (−2+0−2)/3 = −4/3, s2 = (−3+2+0)/3 = −1/3
    np.testing.assert_allclose(reference_scores(L3), [5 / 3, -4 / 3, -1 / 3], atol=1e-12)
    p = reference_table(L3)
    # P01 = σ(5/3 + 4/3) = σ(3) = 0.9525741268224334; P02 = σ(5/3 + 1/3) = σ(2) = 0.8807970779778823
    # P12 = σ(−4/3 + 1/3) = σ(−1) = 0.2689414213699951; diagonal σ(0) = ½
    expected = [
        [0.5, 0.9525741268224334, 0.8807970779778823],
        [1 - 0.9525741268224334, 0.5, 0.2689414213699951],
        [1 - 0.8807970779778823, 1 - 0.2689414213699951, 0.5],
    ]
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-12)


def test_reference_scores_ignore_diagonal():
    with_diag = L3.copy()
    np.fill_diagonal(with_diag, [4.0, -9.0, 2.5])
    np.testing.assert_allclose(reference_scores(with_diag), [5 / 3, -4 / 3, -1 / 3], atol=1e-12)


def test_win_rates_row_means_include_self_term():
    p = debiased_table(L3)
    # w0 = (0.5 + 0.7310585786300049 + 0.7262870634112167)/3 = 1.9573456420412216/3 = 0.6524485473470739
    # w1 = (0.2689414213699951 + 0.5 + 0.30960146101105877)/3 = 1.0785428823810539/3 = 0.3595142941270180
    # w2 = (0.2737129365887833 + 0.6903985389889412 + 0.5)/3 = 1.4641114755777245/3 = 0.4880371585259082
    np.testing.assert_allclose(win_rates(p), [0.6524485473470739, 0.3595142941270180, 0.4880371585259082], atol=1e-12)
    # With a debiased table the rates sum to K/2 = 1.5 (each pair contributes 1, each self term ½)
    assert win_rates(p).sum() == pytest.approx(1.5)


def test_win_rates_batch():
    # two tables of K=2: rows [½, 0.9] -> 0.7 and [0.1, ½] -> 0.3 ; [½, ½] -> ½
    t = np.array([[[0.5, 0.9], [0.1, 0.5]], [[0.5, 0.5], [0.5, 0.5]]])
    np.testing.assert_allclose(win_rates(t), [[0.7, 0.3], [0.5, 0.5]])


def test_select_pair_argmax_argmin():
    s = select(np.array([0.2, 0.9, 0.1, 0.5]))
    assert s.kept == (1, 2)
    assert s.skipped_reason == ""


def test_select_pair_ties_lowest_index_wins():
    # best 0.7 at indices 0 and 2 -> 0; worst 0.2 at indices 1 and 3 -> 1
    assert select(np.array([0.7, 0.2, 0.7, 0.2])).kept == (0, 1)
    # scores within atol (1e-9) count as tied: index 1 wins although index 2 is 1e-12 larger
    assert select(np.array([0.3, 0.7, 0.7 + 1e-12, 0.3 - 1e-12])).kept == (1, 0)


def test_select_all_equal_skips():
    s = select(np.array([0.5, 0.5, 0.5]))
    assert s.kept == ()
    assert s.skipped_reason
    assert "equal" in s.skipped_reason


def test_select_never_returns_the_winner_as_loser():
    """A range between atol and 2·atol: index 0 lies within atol of both the best and the worst score."""
    a = 1e-9
    s = select(np.array([0.5 + 0.75 * a, 0.5, 0.5 + 1.5 * a]), atol=a)
    assert s.kept == (0, 1) and s.kept[0] != s.kept[1]
    s = select(np.array([0.5 + 0.75 * a, 0.5 + 1.5 * a, 0.5 + 0.2 * a]), atol=a)
    assert len(set(s.kept)) == 2 and s.kept[0] == 0


def test_select_all_mode_is_gone():
    with pytest.raises(ValueError, match="unknown selection mode 'all'"):
        select(np.array([0.2, 0.9]), "all")


def test_select_unknown_mode_and_bad_shape():
    with pytest.raises(ValueError):
        select(np.array([0.1, 0.9]), "best")
    with pytest.raises(ValueError):
        select(np.array([0.1]))
    with pytest.raises(ValueError):
        select(np.array([[0.1, 0.9]]))


def test_k_equals_two_pipeline():
    logits = np.array([[0.0, 1.0], [-1.0, 0.0]])
    p = debiased_table(logits)
    # P01 = (σ(1) + σ(1))/2 = 0.7310585786300049
    assert p[0, 1] == pytest.approx(0.7310585786300049, abs=1e-12)
    rates = win_rates(p)
    # w0 = (0.5 + 0.7310585786300049)/2 = 0.6155292893150024; w1 = (0.2689414213699951 + 0.5)/2 = 0.38447071068499755
    np.testing.assert_allclose(rates, [0.6155292893150024, 0.38447071068499755], atol=1e-12)
    assert select(rates).kept == (0, 1)
    # reference mode: s0 = (0 + 2)/2 = 1, s1 = (−2 + 0)/2 = −1 -> P01 = σ(2)
    np.testing.assert_allclose(reference_scores(logits), [1.0, -1.0])
    assert reference_table(logits)[0, 1] == pytest.approx(0.8807970779778823, abs=1e-12)
    assert select(reference_scores(logits)).kept == (0, 1)


@pytest.mark.parametrize("fn", [debiased_table, reference_table, reference_scores])
@pytest.mark.parametrize("shape", [(2, 3), (3,), (2, 3, 4)])
def test_non_square_raises(fn, shape):
    with pytest.raises(ValueError, match="K, K"):
        fn(np.zeros(shape))
