"""OpenVLA-OFT's parallel action decoding on a transformers VLM.

The prompt is OpenVLA's (``In: What action should the robot take to <instruction>?
Out: ``) after the images, followed by T*D placeholder tokens. One forward pass gives,
at the last prompt token and the first T*D-1 placeholders, the logits of the T*D action
tokens (as OFT decodes them in parallel). Only the last 256 vocabulary ids are action
bins (:mod:`models.action_tokens`), so only those rows of the LM head are applied.

Sampling: logits / temperature, then top-k (``model.top_k``; 0 = off), softmax; the mode
in deterministic mode. Log-probs are per token ([B,T,D]) under that processed
distribution, of the action (the two top ids decode to one action: their mass is summed).
Tokens decode to normalised actions, un-normalised with the q01/q99 statistics of
``unnorm_key``; the learner maps stored env actions back to tokens.
An optional value head (an MLP, as RLinf's) reads the last prompt token.

Two backbones, each behind an inputs adapter (``encode`` and ``hidden_states``): OpenVLA's
own Prismatic (DINOv2 + SigLIP + Llama-2, :mod:`models.prismatic`), which the published
OpenVLA-OFT, SimpleVLA-RL and RLinf checkpoints are, and transformers' Qwen2.5-VL
(:class:`QwenVLInputs`).
"""

from __future__ import annotations

from typing import Optional

import torch
from typing_extensions import override

from envs.base import EnvObs
from models.action_norm import ActionNorm
from models.action_tokens import NUM_BINS, actions_to_tokens, bin_index, tokens_to_actions
from models.base import (Evaluation, Policy, PolicyOutput, camera_views, masked_chunk_mean,
                         rlinf_value_head, unwrap)
from models.qwen_oft import IMAGE_PAD, VISION_END, VISION_START, backbone_states, encode_batch

PLACEHOLDER = "<|endoftext|>"


def build_prompt(instruction: str, num_images: int, num_tokens: int) -> str:
    """OpenVLA's question after the images, then ``num_tokens`` action placeholders."""
    images = f"{VISION_START}{IMAGE_PAD}{VISION_END}" * num_images
    return (f"{images}In: What action should the robot take to {instruction.lower()}?\n"
            f"Out: {PLACEHOLDER * num_tokens}")


class QwenVLInputs:
    """OpenVLA's prompt on a Qwen2.5-VL: the images, the question, the placeholders."""

    def __init__(self, tokenizer, image_processor):
        self.tokenizer, self.image_processor = tokenizer, image_processor

    def encode(self, obs: EnvObs, views: list, num_tokens: int, device: torch.device) -> dict:
        """The VLM's inputs on ``device``: per row, the images of ``views`` and OpenVLA's
        question, then ``num_tokens`` action placeholders."""
        prompts = [build_prompt(text, len(views), num_tokens) for text in obs.task_descriptions]
        return encode_batch(self.tokenizer, self.image_processor, prompts, views, device)

    def hidden_states(self, vlm, inputs: dict) -> torch.Tensor:
        """The Qwen2.5-VL's last hidden states [B,L,H] for ``inputs``."""
        return backbone_states(vlm, inputs)


class OpenVLAOFTPolicy(Policy):
    """Parallel-decoded action tokens over a VLM; see the module docstring.

    ``inputs`` turns observations into the VLM's inputs (``encode``) and runs it to its
    last hidden states (``hidden_states``), whose sequence ends with the T*D placeholders.
    """

    def __init__(self, vlm, inputs, num_action_chunks: int, action_dim: int,
                 vocab_size: int = 0, use_wrist: bool = False, top_k: int = 0,
                 value_head: bool = False, norm: Optional[ActionNorm] = None):
        super().__init__()
        self.vlm, self.inputs = vlm, inputs
        self.tokenizer = inputs.tokenizer
        self.num_action_chunks, self.action_dim = num_action_chunks, action_dim
        self.vocab_size = vocab_size or vlm.config.get_text_config().vocab_size
        if self.vocab_size < NUM_BINS:
            raise ValueError(f"a vocabulary of {self.vocab_size} ids cannot end with "
                             f"{NUM_BINS} action bins")
        self.use_wrist, self.top_k, self.norm = use_wrist, top_k, norm or ActionNorm()
        hidden = vlm.config.get_text_config().hidden_size
        self.has_value_head = value_head
        self.value_head = rlinf_value_head(hidden) if value_head else None

    @property
    def num_tokens(self) -> int:
        """Action tokens a chunk: T*D."""
        return self.num_action_chunks * self.action_dim

    @override
    def prepare(self, obs: EnvObs, device: torch.device) -> dict:
        views = camera_views(obs, self.use_wrist)
        return self.inputs.encode(obs, views, self.num_tokens, device)

    def _logits(self, inputs: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Processed action-bin logits [B,T*D,256] (temperature, top-k applied later)."""
        h = self.inputs.hidden_states(self.vlm, inputs)
        n = self.num_tokens
        # Every row's placeholders are at the end: position p predicts token p+1.
        states = h[:, -n - 1:-1]
        head = unwrap(self.vlm).lm_head.weight[self.vocab_size - NUM_BINS:self.vocab_size]
        logits = (states @ head.T.to(states.dtype)).float()
        value = None
        if self.value_head is not None:
            value = self.value_head(h[:, -n - 1]).squeeze(-1).float()
        return logits, value

    def _process(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = logits / temperature
        if self.top_k and self.top_k < NUM_BINS:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits.log_softmax(-1)

    @staticmethod
    def _action_logprobs(logp: torch.Tensor) -> torch.Tensor:
        """Log-probs by action rather than by token: bins 0 and 1 (ids vocab-256 and
        vocab-255) decode to the same action, so bin 1 carries the mass of both."""
        merged = torch.logaddexp(logp[..., 0], logp[..., 1])
        return torch.cat([logp[..., :1], merged.unsqueeze(-1), logp[..., 2:]], dim=-1)

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.num_action_chunks, self.action_dim)

    @override
    def act(self, inputs: dict, deterministic: bool, temperature: float) -> PolicyOutput:
        logits, value = self._logits(inputs)
        logp = self._process(logits, temperature)
        if deterministic:
            choice = logp.argmax(-1)
        else:
            choice = torch.multinomial(logp.exp().flatten(0, 1), 1).view(logp.shape[:2])
        tokens = choice + (self.vocab_size - NUM_BINS)
        normalised = tokens_to_actions(tokens, self.vocab_size)
        actions = self.norm.to_env(self._shape(normalised))
        # The action encodes back to bin 1 when bin 0 was drawn: score the action's
        # probability, which the learner recovers from the action alone.
        scored = bin_index(actions_to_tokens(normalised, self.vocab_size), self.vocab_size)
        logprobs = self._action_logprobs(logp).gather(-1, scored.unsqueeze(-1)).squeeze(-1)
        return PolicyOutput(actions, self._shape(logprobs), value)

    @override
    def evaluate(self, inputs: dict, actions: torch.Tensor, temperature: float) -> Evaluation:
        logits, value = self._logits(inputs)
        logp = self._process(logits, temperature)
        normalised = self.norm.to_policy(actions.to(logits.device)).flatten(1)
        choice = bin_index(actions_to_tokens(normalised, self.vocab_size), self.vocab_size)
        logprobs = self._action_logprobs(logp).gather(-1, choice.unsqueeze(-1)).squeeze(-1)
        probs = logp.exp()
        entropy = -(probs * logp.masked_fill(probs == 0, 0.0)).sum(-1)
        return Evaluation(self._shape(logprobs), self._shape(entropy), value)

    def bc_loss(self, inputs: dict, actions: torch.Tensor, mask: torch.Tensor,
                kind: str = "auto") -> torch.Tensor:
        """OpenVLA-OFT's discrete objective: cross-entropy of each action token (the
        target's bin among the 256) from the one parallel pass over the placeholders."""
        if kind != "auto":
            raise ValueError(f"sft.loss={kind!r}: openvla_oft trains with cross-entropy on "
                             "its action tokens; set sft.loss=auto")
        logits, _ = self._logits(inputs)
        logp = logits.log_softmax(-1)
        normalised = self.norm.to_policy(actions.to(logits.device)).flatten(1)
        target = bin_index(actions_to_tokens(normalised, self.vocab_size), self.vocab_size)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return masked_chunk_mean(self._shape(nll), mask.to(logits.device))
