"""The losses: SFT, the group-relative policy gradient with PPO clipping, and DPO, on per-token log-probs.

Every loss is a sum divided by a `normaliser` the caller gives (tokens or pairs over the *global* batch),
so data-parallel ranks that each see a slice add up to exactly the one-process loss (DDP averages the
gradients; each rank multiplies by the world size, see `distributed.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def advantages(rewards: torch.Tensor, estimator: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages for rewards [groups, samples].

    grpo: (r - mean) / (std + eps), the population std of the group (DeepSeekMath's GRPO);
    rloo: r - mean of the *other* samples (leave-one-out baseline);
    mean: r - mean (GRPO without the std scaling, "Dr. GRPO").
    A group whose rewards are all equal gives zero advantage under every estimator.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        return (rewards - mean) / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    if estimator == "rloo":
        n = rewards.shape[1]
        return (rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)) if n > 1 else rewards * 0
    if estimator == "mean":
        return rewards - mean
    raise ValueError(f"unknown estimator {estimator!r}")


def audio_reward(correct: bool, has_reasoning: bool, correct_weight: float = 0.8,
                 reasoning_weight: float = 0.2) -> float:
    """R_audio = 0.8 * 1[a == a*] + 0.2 * 1[reasoning present] (R1 Eq. 7)."""
    return correct_weight * float(correct) + reasoning_weight * float(has_reasoning)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, token_advantages: torch.Tensor,
                normaliser: float, clip: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate, summed over tokens and divided by `normaliser`:
    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), ratio = exp(logp - logp_old)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * token_advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * token_advantages
    return -torch.minimum(unclipped, clipped).sum() / normaliser


def sft_loss(logprobs: torch.Tensor, normaliser: float) -> torch.Tensor:
    return -logprobs.sum() / normaliser


def sequence_logprobs(logprobs: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum of token log-probs per batch row."""
    return torch.zeros(n_rows, dtype=logprobs.dtype, device=logprobs.device).index_add(0, rows, logprobs)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, normaliser: float) -> torch.Tensor:
    """-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), summed over pairs / `normaliser`."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margin).sum() / normaliser
