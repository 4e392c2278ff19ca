"""Preference losses on per-sequence summed log-probs (torch only, no Ray).

Every function takes tensors of shape [B] holding the sum of the response tokens' log-probs (prompt and padding
already masked out) and returns per-example losses of shape [B]. a = policy − reference log-prob ("log-ratio").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "dpo_loss", "ipo_loss", "sppo_loss", "sppo_single_loss", "sppo_targets"]


def sppo_targets(p_win: torch.Tensor, p_lose: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-ratios SPPO regresses to: η(P̂ − ½) with η = 1/beta."""
    return (p_win - 0.5) / beta, (p_lose - 0.5) / beta


def sppo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    p_win: torch.Tensor,
    p_lose: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """½[(a_w − (p_win − ½)/beta)² + (a_l − (p_lose − ½)/beta)²], p = win rates against π_t."""
    a_w = policy_chosen_logps - ref_chosen_logps
    a_l = policy_rejected_logps - ref_rejected_logps
    t_w, t_l = sppo_targets(p_win, p_lose, beta)
    return 0.5 * ((a_w - t_w) ** 2 + (a_l - t_l) ** 2)


def sppo_single_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    p_chosen: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Pairwise SPPO: ½[(a_w − (p_chosen − ½)/beta)² + (a_l + (p_chosen − ½)/beta)²], p_chosen = P(y_w ≻ y_l)."""
    a_w = policy_chosen_logps - ref_chosen_logps
    a_l = policy_rejected_logps - ref_rejected_logps
    target = (p_chosen - 0.5) / beta
    return 0.5 * ((a_w - target) ** 2 + (a_l + target) ** 2)


def _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """a_w − a_l: how much more the policy than the reference prefers the chosen response."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """−log σ(beta · (a_w − a_l))."""
    return -F.logsigmoid(beta * _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """((a_w − a_l) − 1/(2·beta))²."""
    margin = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (margin - 1.0 / (2.0 * beta)) ** 2


LOSSES = {"sppo": sppo_loss, "sppo_single": sppo_single_loss, "dpo": dpo_loss, "ipo": ipo_loss}
