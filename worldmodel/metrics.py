"""Held-out measures of a world model: PSNR where the scene changes, ROC AUC, and
Spearman's rank correlation (policies ranked in the world model and in the simulator).

Most pixels of a robot scene never move, so PSNR over whole frames rewards copying the
last frame. :func:`changed_pixels` marks, per target frame, the pixels that differ from
the last conditioning frame by more than ``threshold`` (any channel, on the [0, 1]
scale); :func:`psnr` is ``10 log10(1 / MSE)`` over those pixels only. Copying the last
frame is the baseline every prediction is compared with.
"""

from __future__ import annotations

import numpy as np

CHANGE_THRESHOLD = 0.05  # 13 of 255 grey levels: above compression and render noise


def changed_pixels(last: np.ndarray, targets: np.ndarray,
                   threshold: float = CHANGE_THRESHOLD) -> np.ndarray:
    """bool [B,T,H,W]: where target frame t (uint8 [B,T,H,W,3]) differs from the last
    conditioning frame (uint8 [B,H,W,3]) by more than ``threshold`` in some channel."""
    diff = np.abs(targets.astype(np.int16) - last[:, None].astype(np.int16))
    return diff.max(-1) > threshold * 255


def squared_error(pred: np.ndarray, target: np.ndarray, where: np.ndarray) -> tuple[float, int]:
    """(sum of squared errors on the [0, 1] scale, pixel count) over ``where`` [...,H,W]
    of uint8 frames [...,H,W,C] (all C channels of each pixel)."""
    err = ((pred.astype(np.float64) - target.astype(np.float64)) / 255.0) ** 2
    return float(err[where].sum()), int(where.sum()) * pred.shape[-1]


def psnr(sq_sum: float, count: int) -> float:
    """``10 log10(1 / MSE)`` in dB; inf for a perfect prediction, nan for no pixels."""
    if count == 0:
        return float("nan")
    mse = sq_sum / count
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing the mean of their ranks."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ordered = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and ordered[j + 1] == ordered[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(scores, labels) -> float:
    """The probability that a random positive scores above a random negative (ties count
    half): the Mann-Whitney U statistic over the product of the class sizes."""
    labels = np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        return float("nan")
    u = average_ranks(scores)[labels].sum() - pos * (pos + 1) / 2
    return float(u / (pos * neg))


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (nan when
    either side is constant)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denom) if denom else float("nan")


def group_agreement(wm, real) -> dict:
    """Is the world model's reward the real one on the same actions? ``wm`` and ``real``
    [G,N]: the outcomes (1 success, 0 not) of G groups of N action sequences, each judged
    by the world model and replayed in the real env.

    Besides the rates (``false_success``: the world model says success, the real env
    not; ``missed``: the reverse), the **advantage correlation**: with GRPO's centred
    advantages ``a_gi = wm_gi - mean_i wm_gi`` and ``b_gi = real_gi - mean_i real_gi``,
    ``sum(a b) / sqrt(sum(a^2) sum(b^2))`` over every group: the cosine between the
    advantages GRPO trains on and those the real env would give the same episodes (1: the
    same ranking inside every group; 0: unrelated; nan when either side has no mixed
    group). ``mixed_wm`` / ``mixed_real``: the share of groups whose outcomes differ."""
    wm, real = np.asarray(wm, float), np.asarray(real, float)
    a, b = wm - wm.mean(1, keepdims=True), real - real.mean(1, keepdims=True)
    denom = float(np.sqrt((a ** 2).sum() * (b ** 2).sum()))
    return {"wm_success": float(wm.mean()), "real_success": float(real.mean()),
            "false_success": float((wm * (1 - real)).mean()),
            "missed": float(((1 - wm) * real).mean()),
            "agreement": float((wm == real).mean()),
            "advantage_correlation": float((a * b).sum() / denom) if denom else float("nan"),
            "mixed_wm": float((a != 0).any(1).mean()), "mixed_real": float((b != 0).any(1).mean())}
