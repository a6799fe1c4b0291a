"""OpenVLA's action tokens: 256 bins of [-1, 1] on the last 256 ids of the LM vocabulary.

``bins = linspace(-1, 1, 256)`` has 255 centres. A normalised action ``a`` is encoded
as ``vocab - digitize(a, bins)``; token id ``vocab - 1 - k`` decodes to centre ``k``
(``k`` clipped to 0..254), so ``vocab - 256`` -> +0.99608 and ``vocab - 1`` -> -0.99608.
Decoding then encoding a token gives it back; encoding then decoding moves an action to
its bin's centre.
"""

from __future__ import annotations

import torch

NUM_BINS = 256
BINS = torch.linspace(-1.0, 1.0, NUM_BINS, dtype=torch.float64)
CENTRES = ((BINS[:-1] + BINS[1:]) / 2).to(torch.float32)


def tokens_to_actions(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Token ids -> normalised actions (bin centres), float32."""
    k = (vocab_size - 1 - token_ids).clamp(0, NUM_BINS - 2)
    return CENTRES.to(token_ids.device)[k]


def actions_to_tokens(actions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Normalised actions -> token ids, as OpenVLA's ActionTokenizer encodes them."""
    a = actions.to(torch.float64).clamp(-1.0, 1.0)
    bins = BINS.to(actions.device)
    digit = torch.bucketize(a, bins, right=True)  # numpy.digitize: bins[i-1] <= a < bins[i]
    return vocab_size - digit.clamp(1, NUM_BINS)


def bin_index(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Position of each action token among the last 256 ids (0 = ``vocab - 256``)."""
    return token_ids - (vocab_size - NUM_BINS)
