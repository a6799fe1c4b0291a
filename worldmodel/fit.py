"""The optimisation loop the world model's small parts share (state model, decoder).

Each step takes a fresh batch and minimises its loss with AdamW (weight decay 1e-4),
the learning rate decaying from ``lr`` to 0 on a cosine over ``steps``, gradients
clipped to norm 1::

    lr_k = lr * (1 + cos(pi * k / steps)) / 2

The predictor and the success model keep their own loop in :mod:`worldmodel.train`:
they warm up, checkpoint and resume mid-way, which these minutes-long stages do not.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def fit_steps(module: nn.Module, steps: int, lr: float,
              batch_loss: Callable[[], tuple[torch.Tensor, Sequence[float]]],
              on_step: Callable[..., bool] | None = None) -> nn.Module:
    """``steps`` steps of ``module`` on ``batch_loss()``, which draws a batch and returns
    the loss to minimise and the figures ``on_step(k, *figures)`` is told after step k
    (True from it stops the training); ``module`` in eval mode."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    module.train()
    for k in range(1, steps + 1):
        loss, figures = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step is not None and on_step(k, *figures):
            break
    return module.eval()
