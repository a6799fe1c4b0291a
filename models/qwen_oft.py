"""StarVLA's QwenOFT on transformers: Qwen2.5-VL + an MLP head regressing the whole chunk.

The prompt is StarVLA's: the images (main camera, and the wrist camera when configured)
then the instruction followed by ``" Please predict the next T robot actions:
<action>🔍...🔍<action>."`` (T query tokens), in Qwen2.5-VL's chat format. One forward
pass of the backbone gives the last hidden state at the T query positions; the action
head (OpenVLA-OFT's MLPResNet, per token, StarVLA's parameter names) maps each to D
action values: the mean of the chunk, in the policy's [-1, 1] space.

For RL the policy is a Gaussian around that mean with a learnable, state-independent
log-std per action dimension; ``temperature`` scales the std, deterministic mode takes the
mean. Actions leave in env units (:class:`models.action_norm.ActionNorm`); log-probs are
per action dimension of the projected sample (see that module). An optional value head
reads the mean hidden state of the query tokens.

transformers' combined ``Qwen2_5_VLProcessor`` needs torchvision (for video), which has
no CPU build here, so this module does the processor's one extra job itself: each
``<|image_pad|>`` is expanded to ``grid_t*grid_h*grid_w / merge_size**2`` tokens, the
count the model expects. Tokenizer and image processor are transformers' own.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from envs.base import EnvObs
from models.action_norm import ActionNorm
from models.base import (Evaluation, Policy, PolicyOutput, camera_views, masked_chunk_mean,
                         unwrap)

ACTION_TOKEN = "🔍"
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
SYSTEM = "You are a helpful assistant."
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class MLPResNetBlock(nn.Module):
    """x + ReLU(Linear(LayerNorm(x)))."""

    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    """OpenVLA-OFT's action MLP: LayerNorm, Linear, ReLU, residual blocks, LayerNorm, Linear."""

    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim)
                                               for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """StarVLA's head (``action_model.model.*`` in its checkpoints), applied per token."""

    def __init__(self, hidden_size: int, action_dim: int, num_blocks: int = 2):
        super().__init__()
        self.model = MLPResNet(num_blocks, hidden_size, 2 * hidden_size, action_dim)

    @override
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model(h)


def build_prompt(instruction: str, num_images: int, chunk: int,
                 template: str = "{instruction}") -> str:
    """Qwen2.5-VL's chat format with StarVLA's action-query suffix (image pads unexpanded).

    ``template`` is the run's ``datasets.vla_data.CoT_prompt`` when it has one: StarVLA
    puts the instruction, suffix included, where ``{instruction}`` stands."""
    images = f"{VISION_START}{IMAGE_PAD}{VISION_END}" * num_images
    text = template.replace("{instruction}", (
        f"{instruction} Please predict the next {chunk} robot actions: "
        f"<action>{ACTION_TOKEN * chunk}<action>."))
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{images}{text}"
            f"<|im_end|>\n<|im_start|>assistant\n")


def patchify_on_device(views: list[np.ndarray], image_processor,
                       device: torch.device) -> Optional[dict]:
    """Qwen2-VL's image preprocessing for views of a batch (each [B,H,W,3]; row i shows
    image i of every view, in order) in one set of tensor ops on
    ``device``, when the processor would keep the size (it then only rescales,
    normalises and cuts patches, which this reproduces); None otherwise.

    Row-by-row PIL preprocessing is about half of a tiny model's inference pass.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    p = image_processor
    (b, h, w, c), v = views[0].shape, len(views)
    patch, merge, temporal = p.patch_size, p.merge_size, p.temporal_patch_size
    lo, hi = p.size.shortest_edge, p.size.longest_edge  # pixel-count bounds
    if not (p.do_resize and p.do_rescale and p.do_normalize and lo and hi) or \
            smart_resize(h, w, patch * merge, lo, hi) != (h, w):
        return None
    x = torch.from_numpy(np.stack(views, axis=1)).to(device).reshape(b * v, h, w, c).float()
    mean = torch.tensor(p.image_mean, device=device)
    std = torch.tensor(p.image_std, device=device)
    x = ((x * p.rescale_factor - mean) / std).permute(0, 3, 1, 2)  # [N,C,H,W]
    gh, gw = h // patch, w // patch
    x = x.reshape(b * v, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # N, gh/m, gw/m, m, m, C, P, P
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
    grid = torch.tensor([[1, gh, gw]] * (b * v), dtype=torch.long)
    return {"pixel_values": x.reshape(b * v * gh * gw, c * temporal * patch * patch),
            "image_grid_thw": grid}


def encode_batch(tokenizer, image_processor, prompts: list[str], views: list[np.ndarray],
                 device: torch.device) -> dict:
    """Token ids (left-padded) and pixel patches for Qwen2.5-VL; prompt i shows image i of
    every view, in order, each as one ``<|image_pad|>`` expanded to its token count."""
    pix, counts = image_patches(views, len(prompts), image_processor, device)
    texts = []
    for i, prompt in enumerate(prompts):
        for n in counts[i * len(views):(i + 1) * len(views)]:
            prompt = prompt.replace(IMAGE_PAD, "\0" * n, 1)
        texts.append(prompt.replace("\0", IMAGE_PAD))
    tok = tokenizer(texts, padding=True, padding_side="left", return_tensors="pt",
                    add_special_tokens=False)
    return {"input_ids": tok["input_ids"].to(device),
            "attention_mask": tok["attention_mask"].to(device), **pix}


def image_patches(views: list[np.ndarray], rows: int, image_processor,
                  device: torch.device) -> tuple[dict, list[int]]:
    """``pixel_values`` and ``image_grid_thw`` on ``device`` for ``rows`` rows of views (row
    i shows image i of every view, in order), and each image's token count (grid /
    merge_size**2), the number of ``<|image_pad|>`` it takes."""
    pix = patchify_on_device(views, image_processor, device)
    if pix is None:  # a size the processor would resize: let it
        images = [np.ascontiguousarray(v[i]) for i in range(rows) for v in views]
        pix = image_processor(images=images, return_tensors="pt")
    grid = pix["image_grid_thw"]
    merge = int(getattr(image_processor, "merge_size", 2))
    counts = (grid.prod(-1) // (merge ** 2)).tolist()
    return {"pixel_values": pix["pixel_values"].to(device),
            "image_grid_thw": grid.to(device)}, counts


def backbone_states(vlm, inputs: dict) -> torch.Tensor:
    """Last hidden states [B,L,H] of the Qwen2.5-VL (after the final norm, no LM head),
    under LoRA's wrapper if any."""
    base = unwrap(vlm)
    out = base.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     pixel_values=inputs["pixel_values"].to(base.dtype),
                     image_grid_thw=inputs["image_grid_thw"])
    return out.last_hidden_state


class QwenOFTPolicy(Policy):
    """Qwen2.5-VL backbone + chunk regression head + Gaussian; see the module docstring."""

    def __init__(self, vlm, tokenizer, image_processor, num_action_chunks: int,
                 action_dim: int, use_wrist: bool = True, init_log_std: float = -2.5,
                 value_head: bool = False, norm: Optional[ActionNorm] = None,
                 prompt_template: str = "{instruction}"):
        super().__init__()
        self.vlm, self.tokenizer, self.image_processor = vlm, tokenizer, image_processor
        self.num_action_chunks, self.action_dim = num_action_chunks, action_dim
        self.prompt_template = prompt_template
        self.use_wrist, self.norm = use_wrist, norm or ActionNorm()
        hidden = vlm.config.get_text_config().hidden_size
        self.action_model = L1RegressionActionHead(hidden, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.has_value_head = value_head
        self.value_head = nn.Linear(hidden, 1) if value_head else None
        self.action_token_id = tokenizer.convert_tokens_to_ids(ACTION_TOKEN)
        if self.action_token_id is None or self.action_token_id == tokenizer.unk_token_id:
            ids = tokenizer(ACTION_TOKEN, add_special_tokens=False)["input_ids"]
            self.action_token_id = ids[0]  # as StarVLA: the first id of the query string

    # --- inputs ------------------------------------------------------------------------
    @override
    def prepare(self, obs: EnvObs, device: torch.device) -> dict:
        views = camera_views(obs, self.use_wrist)
        prompts = [build_prompt(text, len(views), self.num_action_chunks,
                                self.prompt_template) for text in obs.task_descriptions]
        return encode_batch(self.tokenizer, self.image_processor, prompts, views, device)

    # --- the model ---------------------------------------------------------------------
    def _query_states(self, inputs: dict) -> torch.Tensor:
        h = backbone_states(self.vlm, inputs)  # StarVLA's hidden_states[-1]
        is_query = inputs["input_ids"] == self.action_token_id
        counts = is_query.sum(1)
        t = self.num_action_chunks
        if bool((counts < t).any()):
            raise ValueError(f"a prompt has fewer than {t} action query tokens")
        # The last T query positions of each row (left padding keeps rows aligned).
        order = torch.arange(is_query.shape[1], device=h.device).expand_as(is_query)
        pos = torch.where(is_query, order, -1).topk(t, dim=1).values.sort(dim=1).values
        return h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))

    def _heads(self, inputs: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        q = self._query_states(inputs)
        mean = self.action_model(q).float()
        value = None
        if self.value_head is not None:
            value = self.value_head(q.mean(1)).squeeze(-1).float()
        return mean, value

    def _std(self, temperature: float) -> torch.Tensor:
        return self.log_std.exp() * temperature

    def _logprob(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return -((x - mean) ** 2) / (2 * std ** 2) - std.log() - LOG_SQRT_2PI

    @override
    def act(self, inputs: dict, deterministic: bool, temperature: float) -> PolicyOutput:
        mean, value = self._heads(inputs)
        std = self._std(temperature)
        sample = mean if deterministic else mean + std * torch.randn_like(mean)
        env_actions = self.norm.to_env(sample)
        logprobs = self._logprob(self.norm.to_policy(env_actions), mean, std)
        return PolicyOutput(env_actions, logprobs, value)

    @override
    def evaluate(self, inputs: dict, actions: torch.Tensor, temperature: float) -> Evaluation:
        mean, value = self._heads(inputs)
        std = self._std(temperature)
        logprobs = self._logprob(self.norm.to_policy(actions.to(mean.device)), mean, std)
        entropy = (0.5 + LOG_SQRT_2PI + std.log()).expand_as(mean)
        return Evaluation(logprobs, entropy, value)

    def bc_loss(self, inputs: dict, actions: torch.Tensor, mask: torch.Tensor,
                kind: str = "auto") -> torch.Tensor:
        """StarVLA's QwenOFT objective: L1 between the head's chunk and the target chunk,
        in the normalised action space."""
        if kind != "auto":
            raise ValueError(f"sft.loss={kind!r}: qwen_oft trains with its own L1 loss; "
                             "set sft.loss=auto")
        mean, _ = self._heads(inputs)
        target = self.norm.to_policy(actions.to(mean.device))
        return masked_chunk_mean((mean - target).abs(), mask.to(mean.device))
