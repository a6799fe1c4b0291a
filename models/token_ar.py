"""Autoregressive action tokens (the original OpenVLA's decoding) over a causal LM.

The prompt is a list of token ids, the same for every backend (torch here, vLLM in
:mod:`inference_server.vllm_core`)::

    "In: What action should the robot take to <instruction>?\\nState: " + S state tokens
    + "\\nOut: "

then T*D action tokens are generated one at a time, each conditioned on the ones before
(a KV cache; 56 forward steps for an 8-step chunk of 7-D actions). A text-only backbone
(Qwen2) reads the state as tokens: each dimension clipped to [-1, 1] and quantised into
the same 256 bins as the actions (:mod:`models.action_tokens`).

A Qwen2.5-VL backbone sees the cameras instead, as OpenVLA does (no state)::

    <|vision_start|><|image_pad|><|vision_end|> per view (main, then wrist when
    model.use_wrist_image) + "In: What action should the robot take to <instruction>?\nOut: "

Each ``<|image_pad|>`` is one id in :meth:`TokenARPolicy.prompt_ids` (what vLLM is given:
its processor expands the pads for the images it receives) and is expanded here to the
image's token count (grid / merge_size**2) for transformers, with Qwen2.5-VL's 3-D rotary
positions (the model's ``get_rope_index``; generated tokens continue at ``position +
rope delta`` in all three dimensions, as the model's own ``generate`` does).

An OpenVLA (Prismatic) backbone is the original OpenVLA: its own prompt (BOS, then
``In: What action should the robot take to <instruction>?\nOut:`` and the empty ``▁``
token), the image patches of every view (DINOv2 + SigLIP, projected) right after BOS, as
:mod:`models.prismatic` lays them out: ``[BOS][patches][left padding][prompt]``, each
row's positions counting only its real tokens. :meth:`TokenARPolicy.prompt_ids` is the
text alone (vLLM's OpenVLA model inserts the patches itself).

Action tokens. OpenVLA's bins are the last 256 ids, but the first of them (``vocab -
256``) decodes to the same action as the second. Here it is never sampled: the learner
recovers the tokens from the stored actions, and teacher forcing needs the exact tokens
the server fed back, so each action must have one token. The sampling ids are therefore
the last 255 (``action_ids``), and a stored action always encodes to one of them.

Sampling: logits of those ids / temperature, then top-k (``model.top_k``; 0 = off),
softmax; the mode in deterministic mode. Log-probs are per token ([B,T,D]) under that
processed distribution; the learner scores the stored tokens by teacher forcing with the
same mask, temperature and top-k. Tokens decode to normalised actions, un-normalised with
``unnorm_key``'s statistics. An optional value head (an MLP, as RLinf's) reads the last
prompt token.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from typing_extensions import override

from envs.base import EnvObs
from models.action_norm import ActionNorm
from models.action_tokens import NUM_BINS, actions_to_tokens, tokens_to_actions
from models.base import (Evaluation, Policy, PolicyOutput, camera_views, masked_chunk_mean,
                         rlinf_value_head, unwrap)
from models.qwen_oft import IMAGE_PAD, VISION_END, VISION_START, image_patches

PROMPT_HEAD = "In: What action should the robot take to {}?\nState: "
PROMPT_TAIL = "\nOut: "
VL_PROMPT = "In: What action should the robot take to {}?\nOut: "
SAMPLED_BINS = NUM_BINS - 1  # the last 255 ids: see the module docstring


class TokenARPolicy(Policy):
    """Action tokens generated one by one by ``lm`` (a transformers causal LM whose
    ``.model`` gives hidden states and ``.lm_head`` the logits); see the module docstring."""

    def __init__(self, lm, tokenizer, num_action_chunks: int, action_dim: int,
                 vocab_size: int = 0, top_k: int = 0, value_head: bool = False,
                 norm: Optional[ActionNorm] = None, image_processor=None,
                 use_wrist: bool = False, prismatic=None):
        super().__init__()
        # ``vlm`` as the VLAs name their backbone: LoRA and checkpointing treat all alike.
        self.vlm, self.tokenizer = lm, tokenizer
        # The cameras are the observation with a Qwen2.5-VL (its image_processor given) or
        # a Prismatic VLM (its PrismaticInputs given); else the state is.
        self.image_processor, self.prismatic = image_processor, prismatic
        self.use_wrist = use_wrist and self.sees_images
        self.image_token_id = getattr(lm.config, "image_token_id", None)
        self.num_action_chunks, self.action_dim = num_action_chunks, action_dim
        self.vocab_size = vocab_size or lm.config.get_text_config().vocab_size
        if self.vocab_size < NUM_BINS:
            raise ValueError(f"a vocabulary of {self.vocab_size} ids cannot end with "
                             f"{NUM_BINS} action bins")
        self.top_k, self.norm = top_k, norm or ActionNorm()
        self._tokenised: dict[str, list[int]] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        hidden = lm.config.get_text_config().hidden_size
        self.has_value_head = value_head
        self.value_head = rlinf_value_head(hidden) if value_head else None

    @property
    def num_tokens(self) -> int:
        """Action tokens a chunk: T*D."""
        return self.num_action_chunks * self.action_dim

    @property
    def first_action_id(self) -> int:
        """The lowest id an action is sampled as (``vocab - 255``)."""
        return self.vocab_size - SAMPLED_BINS

    @property
    def action_ids(self) -> list[int]:
        """The ids actions are sampled from, in bin order (vLLM's ``allowed_token_ids``)."""
        return list(range(self.first_action_id, self.vocab_size))

    @property
    def num_views(self) -> int:
        """Images a prompt shows: 0 (text-only backbone), 1 (main) or 2 (and wrist)."""
        return 1 + int(self.use_wrist) if self.sees_images else 0

    @property
    def sees_images(self) -> bool:
        """Whether the prompt shows the cameras (a Qwen2.5-VL or Prismatic backbone)."""
        return self.image_processor is not None or self.prismatic is not None

    def prompt_ids(self, instruction: str, state: np.ndarray) -> list[int]:
        """One row's prompt: the question, the quantised state, the answer's lead-in; with
        images, one unexpanded ``<|image_pad|>`` per view and no state; Prismatic:
        OpenVLA's prompt, BOS first (the patches are not in the ids)."""
        if self.prismatic is not None:
            return self.prismatic.prompt_ids(instruction)
        if self.sees_images:
            return self._text_ids(f"{VISION_START}{IMAGE_PAD}{VISION_END}" * self.num_views
                                  + VL_PROMPT.format(instruction.lower()))
        s = torch.from_numpy(np.clip(np.asarray(state, np.float32), -1.0, 1.0))
        return [*self._text_ids(PROMPT_HEAD.format(instruction.lower())),
                *actions_to_tokens(s, self.vocab_size).tolist(), *self._text_ids(PROMPT_TAIL)]

    def _text_ids(self, text: str) -> list[int]:
        # Every batch repeats a few instructions: each is tokenised once (bounded: a
        # server's peers choose the texts).
        ids = self._tokenised.get(text)
        if ids is None:
            if len(self._tokenised) >= 4096:
                self._tokenised.clear()
            ids = self._tokenised[text] = self.tokenizer(text, add_special_tokens=False)[
                "input_ids"]
        return ids

    def views(self, obs: EnvObs) -> list[np.ndarray]:
        """The camera batches the prompt shows, in order (main, then wrist)."""
        return camera_views(obs, self.use_wrist)

    @override
    def prepare(self, obs: EnvObs, device: torch.device) -> dict:
        rows = [self.prompt_ids(text, obs.states[i])
                for i, text in enumerate(obs.task_descriptions)]
        images = {}
        if self.prismatic is not None:
            return self._prismatic_inputs(rows, self.views(obs), device)
        if self.sees_images:
            rows, images = self._with_images(rows, self.views(obs), device)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left-padded: every row's next token is at the end
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), **images}

    def _with_images(self, rows: list[list[int]], views: list[np.ndarray],
                     device: torch.device) -> tuple[list[list[int]], dict]:
        """Rows with each image pad expanded to its image's token count, and the pixel
        patches of the images (row i shows image i of every view)."""
        images, counts = image_patches(views, len(rows), self.image_processor, device)
        counts = iter(counts)
        expanded = [[t for i in r for t in ([i] * next(counts) if i == self.image_token_id
                                            else [i])] for r in rows]
        return expanded, images

    def _prismatic_inputs(self, rows: list[list[int]], views: list[np.ndarray],
                          device: torch.device) -> dict:
        """``[BOS][one slot per patch][left padding][prompt after BOS]`` (the slots' ids are
        padding: their embeddings are replaced by the patches), the mask, the pixels."""
        slots = 1 + unwrap(self.vlm).vision_backbone.num_patches
        width = max(len(r) for r in rows) - 1
        ids = torch.full((len(rows), slots + width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, 0], mask[:, :slots] = rows[0][0], 1
        for i, r in enumerate(rows):
            ids[i, slots + width - len(r) + 1:] = torch.tensor(r[1:])
            mask[i, slots + width - len(r) + 1:] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "pixel_values": self.prismatic.pixels(views, device)}

    def _prismatic_hidden(self, input_ids, mask, position_ids, past, cache: bool,
                          images: Optional[dict]):
        """Prismatic's language model over the ids' embeddings, the projected patches in
        the slots after BOS when ``images`` are given (the prompt pass)."""
        vlm = unwrap(self.vlm)
        x = vlm.language_model.get_input_embeddings()(input_ids)
        if images is not None:
            patches = vlm.patch_embeddings(images["pixel_values"], x.dtype)
            x = torch.cat([x[:, :1], patches, x[:, 1 + patches.shape[1]:]], 1)
        return vlm.language_model.model(inputs_embeds=x, attention_mask=mask,
                                        position_ids=position_ids, past_key_values=past,
                                        use_cache=cache)

    def _hidden(self, input_ids, mask, past=None, cache: bool = False,
                images: Optional[dict] = None, rope_deltas=None):
        """Last hidden states of ``input_ids`` given ``mask`` over the whole sequence so
        far (positions counted from each row's first real token), the KV cache, and (with
        images, when ``images`` are in ``input_ids``) the rows' rotary position deltas."""
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)[:, -input_ids.shape[1]:]
        if self.prismatic is not None:
            out = self._prismatic_hidden(input_ids, mask, position_ids, past, cache, images)
            return out.last_hidden_state, out.past_key_values, None
        extra = {}
        if self.image_processor is not None:
            model = unwrap(self.vlm).model
            if images is not None:
                position_ids, rope_deltas = model.get_rope_index(
                    input_ids, mm_token_type_ids=(input_ids == self.image_token_id).int(),
                    image_grid_thw=images["image_grid_thw"], attention_mask=mask)
                dtype = getattr(model, "dtype", torch.float32)
                extra = {"pixel_values": images["pixel_values"].to(dtype),
                         "image_grid_thw": images["image_grid_thw"]}
            else:
                position_ids = (position_ids + rope_deltas).unsqueeze(0).expand(3, -1, -1)
        out = unwrap(self.vlm).model(input_ids=input_ids, attention_mask=mask,
                                    position_ids=position_ids, past_key_values=past,
                                    use_cache=cache, **extra)
        return out.last_hidden_state, out.past_key_values, rope_deltas

    def _images(self, inputs: dict) -> Optional[dict]:
        if self.prismatic is not None:
            return {"pixel_values": inputs["pixel_values"]}
        return ({k: inputs[k] for k in ("pixel_values", "image_grid_thw")}
                if self.sees_images else None)

    def _bin_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Logits of the sampled action ids [..., 255] from hidden states [..., H]."""
        head = unwrap(self.vlm).lm_head.weight[self.first_action_id:self.vocab_size]
        return (states @ head.T.to(states.dtype)).float()

    def _process(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = logits / temperature
        if self.top_k and self.top_k < SAMPLED_BINS:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits.log_softmax(-1)

    def _value(self, h_last: torch.Tensor) -> Optional[torch.Tensor]:
        return None if self.value_head is None else self.value_head(h_last).squeeze(-1).float()

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.num_action_chunks, self.action_dim)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Env actions [B,T,D] of action ids [B,T*D]."""
        return self.norm.to_env(self._shape(tokens_to_actions(tokens, self.vocab_size)))

    def stored_tokens(self, actions: torch.Tensor) -> torch.Tensor:
        """The action ids [B,T*D] a chunk of env actions [B,T,D] was sampled as."""
        normalised = self.norm.to_policy(actions).flatten(1)
        return actions_to_tokens(normalised, self.vocab_size).clamp_min(self.first_action_id)

    @override
    def act(self, inputs: dict, deterministic: bool, temperature: float) -> PolicyOutput:
        mask = inputs["attention_mask"]
        h, past, deltas = self._hidden(inputs["input_ids"], mask, cache=True,
                                       images=self._images(inputs))
        h_last, value = h[:, -1], self._value(h[:, -1])
        tokens, logprobs = [], []
        for i in range(self.num_tokens):
            logp = self._process(self._bin_logits(h_last), temperature)
            if deterministic:
                choice = logp.argmax(-1)
            else:
                choice = torch.multinomial(logp.exp(), 1).squeeze(-1)
            logprobs.append(logp.gather(-1, choice.unsqueeze(-1)).squeeze(-1))
            tokens.append(choice + self.first_action_id)
            if i + 1 < self.num_tokens:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                h, past, _ = self._hidden(tokens[-1].unsqueeze(-1), mask, past, cache=True,
                                          rope_deltas=deltas)
                h_last = h[:, -1]
        tokens_t = torch.stack(tokens, dim=1)
        return PolicyOutput(self.decode(tokens_t), self._shape(torch.stack(logprobs, 1)),
                            value)

    def _teacher_forced(self, inputs: dict, actions: torch.Tensor):
        """Bin logits [B,T*D,255] of the stored tokens' positions, the targets' bins, the
        value."""
        tokens = self.stored_tokens(actions.to(inputs["input_ids"].device))
        width = inputs["input_ids"].shape[1]
        ids = torch.cat([inputs["input_ids"], tokens[:, :-1]], dim=1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(tokens[:, :-1])], dim=1)
        h, _, _ = self._hidden(ids, mask, images=self._images(inputs))
        # Position p predicts token p+1: the last prompt token predicts the first action.
        logits = self._bin_logits(h[:, width - 1:])
        return logits, tokens - self.first_action_id, self._value(h[:, width - 1])

    @override
    def evaluate(self, inputs: dict, actions: torch.Tensor, temperature: float) -> Evaluation:
        logits, target, value = self._teacher_forced(inputs, actions)
        logp = self._process(logits, temperature)
        logprobs = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        probs = logp.exp()
        entropy = -(probs * logp.masked_fill(probs == 0, 0.0)).sum(-1)
        return Evaluation(self._shape(logprobs), self._shape(entropy), value)

    def bc_loss(self, inputs: dict, actions: torch.Tensor, mask: torch.Tensor,
                kind: str = "auto") -> torch.Tensor:
        """OpenVLA's objective: cross-entropy of each action token given the tokens before
        it (teacher forcing), over the 255 sampled ids."""
        if kind != "auto":
            raise ValueError(f"sft.loss={kind!r}: token_ar trains with cross-entropy on its "
                             "action tokens; set sft.loss=auto")
        logits, target, _ = self._teacher_forced(inputs, actions)
        nll = -logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return masked_chunk_mean(self._shape(nll), mask.to(logits.device))
