"""The configuration schema: every field has a type, a default and a one-line doc.

Loaded once by :func:`configs.load_config`, validated, then never changed (frozen).
Role code reads attributes; it never looks keys up with defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from protocol import ids

# Initial-state ids are ``task_index * INIT_STRIDE + state_index`` (state_index < STRIDE):
# one integer names the task and the start, for group resets and evaluation trials.
INIT_STRIDE = 1000
# State indices below this are evaluation trials (trial k starts from state k). With
# ``env.held_out_eval_states`` training draws stay above it, and demonstrations are
# recorded there (``record.first_state``).
EVAL_STATES = 100


# Sections whose fields for one family live in a sub-section of that name. Their fields
# were flat in the parent section before: the loader refuses an old flat key, naming its
# new place. The VLA keys stay flat in ``model``: they are RLinf's ``actor.model.*``
# names, which the loader takes as ``model.*`` so that RLinf's configs load unchanged.
FAMILY_SECTIONS = {"env": ("synthetic", "libero", "robosuite", "world_model"),
                   "learner": ("ppo", "grpo"), "model": ("cnn",)}


def opt(default, doc: str):
    """A config field with its default and its one-line documentation."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RunConfig:
    """What this run is called, where it logs and how long it trains."""

    name: str = opt("chunkrl", "run name, used in the log directory")
    mode: Literal["train", "eval", "record", "sft", "train_world_model"] = opt(
        "train", "train: RL (GRPO/PPO); eval: every task x trial once, success table (see "
        "eval); record: demonstrations to HDF5 (see record); sft: behaviour cloning on "
        "recorded demonstrations (see sft); train_world_model: a frame predictor and a "
        "success model on recorded episodes (see world_model)")
    log_dir: str = opt("runs/chunkrl", "TensorBoard logs, checkpoint and role logs go here")
    run_id: str = opt("", "shared by all processes of a run; empty: a fresh id (--role: run.name)")
    seed: int = opt(0, "base seed; each actor and env derives its own from it")
    total_updates: int = opt(100, "learner updates before the run ends")
    torch_threads: int = opt(1, "torch intra-op threads per process")
    progress_every_s: float = opt(5.0, "seconds between progress lines on the terminal")
    max_duration_s: float = opt(0.0, "also stop training after this many seconds once the "
                                "learner is ready (0: no time limit); a learner restarted by "
                                "the supervisor spends what is left, --resume starts anew")
    resume: bool = opt(False, "continue the run in log_dir from its checkpoint (set by "
                       "launch.py --resume)")
    incarnation: int = opt(0, "how many times the run was resumed (set by --resume); part "
                           "of every episode id, so resumed ids never repeat")
    start: int = opt(0, "how many times this role's process was started before (set by the "
                     "supervisor); with run.incarnation it makes the process's incarnation")
    max_restarts: int = opt(10, "a dead actor, server or learner is restarted at most this "
                            "many times (the learner from its checkpoint); 0: never")
    restart_backoff_s: float = opt(1.0, "first restart delay; doubles with each restart of "
                                   "the same process, at most 30 s")


@dataclass(frozen=True)
class NetworkConfig:
    """Where the roles listen; see links/wiring.py for which socket connects where."""

    transport: Literal["ipc", "tcp", "inproc"] = opt(
        "ipc", "ipc (one host), tcp (any hosts) or inproc (--single-process only)")
    learner_host: str = opt("127.0.0.1", "host of the learner: its rendezvous, trajectories "
                            "and the weights store")
    inference_hosts: list[str] = opt(["127.0.0.1"], "host of each inference server (one = "
                                     "all), announced when network.bind_host is 0.0.0.0")
    bind_host: str = opt("127.0.0.1", "the address this host's roles bind and announce; "
                         "0.0.0.0: every interface")
    base_port: int = opt(5550, "tcp: rendezvous=base, trajectories=base+1, weights "
                         "store=base+2, server i=base+3+i")
    ipc_dir: str = opt("/tmp/chunkrl", "ipc: socket files go under ipc_dir/run_id/")
    max_message_mb: int = opt(512, "larger received messages are rejected")
    high_water_mark: int = opt(32, "messages queued per socket before senders block")
    weights_backend: Literal["auto", "gloo", "nccl"] = opt(
        "auto", "torch.distributed backend for weights: auto = nccl between two GPUs, gloo "
        "where the learner and a server share a GPU or one is on the CPU")
    weights_shared: Literal["auto", "same_host", "never"] = opt(
        "auto", "an update's buffers through memory both ends map (links/shared_weights.py), "
        "the group carrying only the header: auto = where the learner and a server share a "
        "GPU (CUDA IPC); same_host = also two CPU processes of one host (/dev/shm); never")
    weights_timeout_s: float = opt(300.0, "a weight broadcast slower than this fails")
    join_timeout_s: float = opt(30.0, "forming a server's weights group slower than this "
                                "fails (the server is taken for dead)")
    heartbeat_s: float = opt(1.0, "actors and servers tell the rendezvous they live this often")
    heartbeat_timeout_s: float = opt(10.0, "a registered process silent this long is taken "
                                     "for dead (an actor's unfinished groups are discarded)")
    learner_wait_s: float = opt(120.0, "actors and servers wait this long for a lost learner "
                                "to come back, then exit with a message")
    curve_dir: str = opt("", "CURVE authentication and encryption on every ZeroMQ link with "
                         "the keys `launch.py keys DIR` made; empty: off")


@dataclass(frozen=True)
class SyntheticEnvConfig:
    """env.kind=synthetic: the coloured-targets arena (envs/synthetic.py)."""

    num_targets: int = opt(3, "coloured targets in the arena (1..6)")
    target_radius: float = opt(0.12, "success distance, arena is [0,1]^2")
    agent_speed: float = opt(0.05, "displacement per step at action 1.0")
    progress_reward: float = opt(0.0, "reward per unit of distance closed toward "
                                 "the named target, on top of 1 for success (0 = sparse)")
    goal_in_state: bool = opt(False, "the named target's position is in the "
                              "state (False: only the image and instruction say where)")
    step_busy_ms: float = opt(0.0, "CPU busy time per env step (benchmarks)")
    step_sleep_ms: float = opt(0.0, "sleep per env step (benchmarks)")


@dataclass(frozen=True)
class LiberoEnvConfig:
    """env.kind=libero: which suite and tasks (envs/libero.py)."""

    suite: str = opt("libero_spatial", "libero_spatial, libero_object, libero_goal, "
                     "libero_10 or libero_90")
    task_ids: list[int] = opt([], "task ids to run (empty: every task of the suite)")
    task_assignment: Literal["per_group", "random"] = opt(
        "per_group", "per_group = each group keeps one task (simulators built once); "
        "random = a random task per reset (a simulator rebuild, seconds, on each change)")


@dataclass(frozen=True)
class RobosuiteEnvConfig:
    """env.kind=robosuite: which task (envs/robosuite_tasks.py)."""

    task: str = opt("Lift", "Lift, Stack, PickPlaceCan, PickPlaceBread, Door, "
                    "NutAssemblySquare or NutAssemblyRound")


@dataclass(frozen=True)
class BranchConfig:
    """env.world_model.branch: training episodes that start from a later state a recorded
    episode really reached, not a first frame (MBPO's branched rollouts from real states:
    the predicted state drifts over fewer steps before success is judged)."""

    data: list[str] = opt([], "recordings with simulator states (the policy's own: the SFT "
                          "policy's, a replay stage's) whose episodes' states start training "
                          "episodes: every `every`-th step before the episode's success, the "
                          "step count going on from there")
    share: float = opt(0.0, "the share of training resets (state indices >= 100: never an "
                       "evaluation trial) that start from a branch point of data instead of "
                       "a reset frame; 0: none")
    every: int = opt(8, "steps between an episode's branch points (8: each chunk of the "
                     "Lift policy's)")
    successes_only: bool = opt(False, "branch only from episodes that succeeded (states the "
                               "task is known to be reachable from; a failed episode's later "
                               "states may be past recovery)")
    before_success: int = opt(0, "in an episode that succeeded, branch only from steps more "
                              "than this many before its success (16 on Lift: two chunks, "
                              "before the gripper closes in most of the SFT policy's "
                              "successes, RESULTS.md), so RL still has the grasp to learn")


@dataclass(frozen=True)
class WorldModelEnvConfig:
    """env.kind=world_model: a learned simulator (envs/world_model.py), RLinf's OpenSora
    env's contract: resets from stored first frames, one call per action chunk."""

    checkpoint: str = opt("", "the world model (a train_world_model run's world_model.pt)")
    reset_data: list[str] = opt([], "episodes whose first frame and instruction reset the "
                                "envs: chunkrl/LIBERO HDF5 files or folders, or RLinf "
                                "traj*.npy folders")
    stats_path: str = opt("", "a dataset_statistics.json whose action q01/q99 normalise "
                          "the actions (RLinf's flat layout or OpenVLA's); empty: the "
                          "checkpoint's own")
    reward_coef: float = opt(1.0, "reward = reward_coef x the change of the success score "
                             "(an episode's return telescopes to reward_coef x its last "
                             "score)")
    success_threshold: float = opt(0.9, "success when the success model's probability for "
                                   "a frame reaches this (RLinf rounds it, then compares "
                                   "with 0.9: that is 0.5 here)")
    success_frames: int = opt(1, "success when the probability has reached "
                              "success_threshold on this many consecutive generated frames "
                              "(1: any frame, RLinf's rule; more: a success the world model "
                              "shows for one frame only is not one)")
    binary_score: bool = opt(True, "the reward differences scores of 1 on a successful "
                             "frame, else 0 (RLinf's ResnetRM); false: the probability")
    judge: Literal["frames", "state", "both", "simulator"] = opt(
        "frames", "what the success probability reads: frames (the success model on the "
        "generated frames, RLinf's); state (the world model's state model on the simulator "
        "state it predicts from the reset frame's recorded state and the actions: "
        "world_model.state.steps > 0, reset_data recorded with simulator states); both "
        "(the lower of the two); simulator (the real simulator's own success check on that "
        "predicted state, 1 or 0: learned dynamics, exact success rule; robosuite "
        "recordings of env.robosuite.task)")
    frames: Literal["generator", "state", "simulator"] = opt(
        "generator", "what draws the frames the policy sees: generator (the frame "
        "predictor, from the last frames and the chunk, RLinf's); state (the world "
        "model's decoder, from the simulator state its state model predicts: needs "
        "world_model.state.steps and world_model.decoder.steps > 0 and reset_data "
        "recorded with simulator states); simulator (the real simulator's renderer draws "
        "that predicted state, each chunk's last, at env.image_size, without a physics "
        "step: robosuite recordings of env.robosuite.task, judge=state or simulator)")
    proprio: Literal["zeros", "state", "simulator"] = opt(
        "zeros", "the state the policy is handed: zeros (RLinf's: the world model makes "
        "none); state (the proprioception the state model reads off the simulator state "
        "it predicts: world_model.state.proprio=true, reset_data recorded with simulator "
        "states; the policy reads it with model.cnn.read_state=true); simulator (the real "
        "simulator's reading of that predicted state: exact forward kinematics)")
    branch: BranchConfig = field(default_factory=BranchConfig,
                                 metadata={"doc": "training episodes started from states "
                                           "recorded episodes reached"})
    device: str = opt("cpu", "where the models run: cpu, cuda, auto")


@dataclass(frozen=True)
class EnvConfig:
    """The environment every actor runs."""

    kind: Literal["synthetic", "libero", "robosuite", "world_model"] = opt(
        "synthetic", "environment family: synthetic, libero, robosuite, or world_model (a "
        "learned simulator: one camera, zero states)")
    image_size: int = opt(224, "height and width of camera images")
    max_episode_steps: int = opt(
        0, "env steps before truncation; 0: the family's default (synthetic 64, robosuite "
        "200, world_model 240, LIBERO per suite: spatial 220, object 280, goal 300, 10 520, "
        "90 400)")
    held_out_eval_states: bool = opt(
        False, "training never starts from an evaluation trial's initial state (state "
        "indices 0..99): LIBERO trains on generated placements instead of its 50 official "
        "states, robosuite and synthetic on seeds >= 100")
    settle_steps: int = opt(10, "libero/robosuite: no-op steps after each reset, uncounted")
    success_hold_steps: int = opt(
        0, "libero/robosuite: steps an episode goes on after its first success (reward 1 "
        "only there; each step's success the benchmark's check): recordings that show the "
        "task held, for a world model's success model; 0: it ends at the first success, "
        "the benchmarks' rule")
    state_dim: int = opt(8, "libero/robosuite: 8 (LIBERO's state) or 7 (grippers averaged)")
    wrist_camera: bool = opt(True, "libero/robosuite: also send the eye-in-hand camera")
    record_cameras: list[str] = opt(
        [], "robosuite: cameras chunkrl adds to the scene (envs/cameras.py: table_front), "
        "rendered at every recorded step into obs/<camera>_rgb; no policy sees them: views "
        "for a world model's success model (world_model.cameras); recordings made without "
        "them get them from their states with scripts/render_camera.py")
    image_orientation: Literal["auto", "upright", "libero"] = opt(
        "auto", "upright, or libero (rotated 180 degrees, as LIBERO's datasets and "
        "checkpoints have it); auto: libero for LIBERO, upright otherwise (a world model "
        "of LIBERO sets libero: its frames and reset frames are read so)")
    gripper_convention: Literal["env", "openvla", "starvla"] = opt(
        "env", "how the policy's last action dim maps to the gripper (envs/robot_io.py)")
    render_backend: Literal["auto", "egl", "osmesa"] = opt(
        "auto", "MuJoCo offscreen GL: auto tries egl, then osmesa")
    fast_render: bool = opt(False, "no multisampling, shadows or reflections: ~2x faster "
                            "rendering on CPU, and different images")
    synthetic: SyntheticEnvConfig = field(default_factory=SyntheticEnvConfig,
                                          metadata={"doc": "env.kind=synthetic only"})
    libero: LiberoEnvConfig = field(default_factory=LiberoEnvConfig,
                                    metadata={"doc": "env.kind=libero only"})
    robosuite: RobosuiteEnvConfig = field(default_factory=RobosuiteEnvConfig,
                                          metadata={"doc": "env.kind=robosuite only"})
    world_model: WorldModelEnvConfig = field(default_factory=WorldModelEnvConfig,
                                             metadata={"doc": "env.kind=world_model only"})


@dataclass(frozen=True)
class StarVLAConfig:
    """StarVLA checkpoints (RLinf's ``actor.model.starvla``)."""

    framework_name: str = opt("QwenOFT", "the StarVLA framework; only QwenOFT is built")
    expected_action_dim: int = opt(0, "must equal model.action_dim (0: not checked)")
    expected_num_action_chunks: int = opt(0, "must equal model.num_action_chunks (0: not "
                                          "checked)")


@dataclass(frozen=True)
class CNNPolicyConfig:
    """model.kind=cnn_gaussian: the small CPU policy's sizes (models/cnn_policy.py)."""

    hidden_dim: int = opt(128, "width of the MLP trunk")
    conv_channels: int = opt(16, "channels of the image encoder")
    embed_dim: int = opt(32, "instruction embedding width")
    vocab_size: int = opt(1024, "hashed-word vocabulary of the instruction embedding")
    image_resolution: int = opt(64, "images are resized to this square")
    wrist_camera: bool = opt(False, "also read the wrist camera, with an encoder of its own "
                             "(needs env.wrist_camera=true)")
    read_state: bool = opt(True, "feed the env's state vector to the policy; false for a "
                           "policy that acts in a world model, whose state is zeros (images "
                           "and instruction only, as RLinf's world-model policies)")


@dataclass(frozen=True)
class ModelConfig:
    """The policy, shared by the inference servers and the learner.

    RLinf-style keys are accepted too: ``actor.model.X`` means ``model.X``, and
    ``rollout.model.model_path`` must equal ``actor.model.model_path`` (see the loader).
    """

    kind: Literal["cnn_gaussian", "qwen_oft", "openvla_oft", "token_ar"] = opt(
        "cnn_gaussian", "policy family: cnn_gaussian (small CPU policy), qwen_oft, "
        "openvla_oft, or token_ar (action tokens generated one by one by a causal LM)")
    num_action_chunks: int = opt(8, "T: actions per chunk")
    action_dim: int = opt(7, "D: action dimension")
    state_dim: int = opt(8, "dimension of the state vector the policy reads")
    init_log_std: float = opt(-0.5, "initial state-independent log-std of every action dim")
    value_head: bool = opt(False, "add a value head (PPO)")
    checkpoint: str = opt("", "a chunkrl checkpoint.pt to start from (empty: fresh weights)")
    model_path: str = opt("", "qwen_oft: a local StarVLA run dir / .pt, or a Hugging Face "
                          "Qwen2.5-VL dir (head freshly initialised); openvla_oft: an "
                          "OpenVLA (Prismatic) or Qwen2.5-VL Hugging Face dir; token_ar: a "
                          "Hugging Face Qwen2 causal LM (reads the state) or Qwen2.5-VL "
                          "(reads the cameras) dir")
    unnorm_key: str = opt("", "dataset key in dataset_statistics.json for un-normalising "
                          "actions (empty: actions are not un-normalised)")
    action_stats: Literal["q01q99", "minmax"] = opt(
        "q01q99", "which statistics bound the actions: q01/q99 or min/max")
    binarize_gripper: bool = opt(False, "qwen_oft: threshold the gripper dim at 0.5 to "
                                 "{0,1} in the model (off: the env's starvla convention "
                                 "thresholds it, and log-probs stay those of the sample)")
    use_wrist_image: bool = opt(True, "VLAs: the prompt holds the wrist camera too (RLinf: "
                                "num_images_in_input 2)")
    starvla: StarVLAConfig = field(default_factory=StarVLAConfig,
                                   metadata={"doc": "StarVLA checkpoint settings"})
    lora_rank: int = opt(0, "VLAs: a new LoRA of this rank on the backbone via peft (0: "
                         "train the full model)")
    lora_path: str = opt("", "VLAs: a peft LoRA adapter directory to load (and train)")
    top_k: int = opt(0, "openvla_oft, token_ar: sample among the k likeliest bins (0: all)")
    action_vocab_size: int = opt(0, "openvla_oft, token_ar: the action bins are the 256 ids "
                                 "below this (0: OpenVLA's text vocab_size - "
                                 "pad_to_multiple_of, 32000; a Qwen model's vocab_size)")
    gradient_checkpointing: bool = opt(False, "VLAs: recompute backbone activations "
                                       "in the learner's backward pass (saves GPU memory)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = opt(
        "sdpa", "VLAs: transformers attention kernel of the language model")
    cnn: CNNPolicyConfig = field(default_factory=CNNPolicyConfig,
                                 metadata={"doc": "model.kind=cnn_gaussian only"})


@dataclass(frozen=True)
class ActorConfig:
    """Actor processes: how many, their envs, pipeline and delivery."""

    num_actors: int = opt(2, "actor processes")
    envs_per_actor: int = opt(16, "E: environments per actor process")
    pipeline_stages: int = opt(2, "S: env stages per actor; one steps while others wait")
    group_size: int = opt(8, "G: envs of a GRPO group, reset to one initial state")
    actions_per_chunk: int = opt(0, "N: actions executed per chunk (1..T); 0 means T")
    deterministic: bool = opt(False, "ask the policy for its mean action (no sampling)")
    request_timeout_s: float = opt(120.0, "no action reply in this long is an error")
    request_retry_s: float = opt(10.0, "a request unanswered this long goes again, to "
                                 "another inference server when there is one")
    max_unacked_episodes: int = opt(64, "episodes awaiting the learner's ack before blocking")
    resend_after_s: float = opt(30.0, "resend an unacknowledged episode after this long")
    flush_timeout_s: float = opt(60.0, "at exit, wait this long for outstanding acks")


@dataclass(frozen=True)
class VLLMConfig:
    """inference.backend=vllm: the engine (inference_server/vllm_core.py)."""

    max_model_len: int = opt(1024, "longest prompt plus T*D action tokens, in tokens")
    kv_cache_mb: int = opt(64, "KV cache of the engine, MiB")
    block_size: int = opt(0, "tokens per KV cache block, a multiple of 32 on CPU (0: "
                          "vLLM's default, 128 on CPU); only whole blocks of a shared "
                          "prompt prefix are reused")
    enforce_eager: bool = opt(True, "no graph capture or compilation (a compiled graph "
                              "would keep the weights it traced across reloads)")


@dataclass(frozen=True)
class InferenceConfig:
    """Batched inference servers."""

    num_servers: int = opt(1, "inference server processes")
    max_batch: int = opt(64, "most environments answered by one forward pass")
    max_wait_ms: float = opt(5.0, "wait this long after the first request for more")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda when present")
    dtype: Literal["fp32", "bf16"] = opt(
        "fp32", "the servers' parameters: bf16 halves their memory and each weights "
        "update's bytes (the learner sends them cast), the forward pass runs in bf16 "
        "autocast; buffers (action statistics) stay fp32. The learner's "
        "train/actor/logprob_drift shows what it costs")
    temperature: float = opt(1.0, "sampling temperature (scales the Gaussian std)")
    backend: Literal["torch", "vllm"] = opt("torch", "torch: the policy's own forward "
                                            "pass; vllm: model.kind=token_ar's action tokens "
                                            "generated by vLLM")
    vllm: VLLMConfig = field(default_factory=VLLMConfig,
                             metadata={"doc": "inference.backend=vllm only"})


@dataclass(frozen=True)
class PPOConfig:
    """learner.algorithm=ppo: the value head's optimisation, GAE and the value loss."""

    critic_lr: float = opt(0.0, "learning rate of the value head (0: lr)")
    critic_lr_warmup_steps: int = opt(0, "updates of linear warmup of critic_lr")
    critic_warmup_updates: int = opt(0, "updates that train only the value loss "
                                     "before the policy loss joins (veRL's critic_warmup)")
    gamma: float = opt(0.99, "discount per chunk (reward_level=chunk) or per action")
    gae_lambda: float = opt(0.95, "GAE lambda, per chunk step")
    reward_level: Literal["chunk", "action"] = opt(
        "chunk", "chunk: a chunk's reward is its actions' sum, discounted once per "
        "chunk; action: each action's reward discounted per action")
    normalize_advantages: bool = opt(True, "(A - mean) / (std + eps) over the batch")
    value_coef: float = opt(0.5, "weight of the value loss")
    value_clip: float = opt(0.2, "value clipping around the behaviour value")
    huber_delta: float = opt(10.0, "Huber threshold of the value loss")


@dataclass(frozen=True)
class GRPOConfig:
    """learner.algorithm=grpo: which groups are trained on."""

    filter_equal_groups: bool = opt(True, "skip groups whose scores are all equal")
    group_mean_bounds: list[float] = opt([], "[low, high]: train only on groups whose "
                                         "mean score is inside (DAPO/RLinf: drop all-fail "
                                         "and all-success groups); empty: off")


@dataclass(frozen=True)
class LearnerConfig:
    """The learner: GRPO, or PPO with a value head and GAE."""

    algorithm: Literal["grpo", "ppo"] = opt(
        "grpo", "grpo: group-relative advantages; ppo: GAE from a value head (set "
        "model.value_head=true)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda when present")
    num_ranks: int = opt(1, "data-parallel learner processes (one GPU each): every rank "
                         "computes its share of each optimizer step's micro-batches and "
                         "the gradients are summed (learner/data_parallel.py); rank 0 "
                         "receives, broadcasts weights and checkpoints")
    sharding: Literal["replicate", "fsdp"] = opt(
        "replicate", "with num_ranks > 1: replicate = every rank holds the whole model, "
        "gradients summed (DDP's memory); fsdp = FSDP2 fully_shard, each rank holds 1/"
        "num_ranks of the weights, gradients and Adam state (learner/sharding.py)")
    bf16: bool = opt(True, "bf16 autocast of forward/backward on CUDA (ignored on CPU)")
    lr: float = opt(3e-4, "Adam learning rate (peak, after warmup)")
    lr_schedule: Literal["constant", "cosine"] = opt(
        "constant", "after warmup: constant, or cosine decay to min_lr_ratio * lr")
    lr_warmup_steps: int = opt(0, "updates of linear warmup from 0 to lr")
    lr_decay_steps: int = opt(0, "cosine: updates from the warmup's end to the minimum "
                              "(0: run.total_updates)")
    min_lr_ratio: float = opt(0.0, "cosine: the final lr as a share of lr")
    adam_eps: float = opt(1e-8, "Adam epsilon")
    weight_decay: float = opt(0.0, "Adam weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping by global norm")
    groups_per_update: int = opt(4, "complete GRPO groups in one global batch")
    global_batch_size: int = opt(0, "chunks per optimizer step (mini-batch); 0: all the "
                                 "update's chunks in one step")
    micro_batch_size: int = opt(256, "chunks per forward/backward; grads accumulate to "
                                "global_batch_size")
    update_epochs: int = opt(1, "passes over each global batch")
    clip_ratio_low: float = opt(0.2, "ratio clipped below at 1 - clip_ratio_low")
    clip_ratio_high: float = opt(0.28, "ratio clipped above at 1 + clip_ratio_high")
    clip_ratio_c: float = opt(3.0, "dual clip: loss bounded by c * |A| for A < 0")
    ratio_level: Literal["action_dim", "action", "chunk"] = opt(
        "action_dim", "importance ratio per action dimension, per action or per chunk")
    entropy_coef: float = opt(0.0, "weight of the entropy bonus")
    kl_beta: float = opt(0.0, "weight of the KL penalty to a frozen copy of the starting "
                         "policy (k3 estimate); 0: none, no copy is kept")
    loss_aggregation: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = opt(
        "token-mean", "policy loss over valid elements: mean of all; or per chunk the sum / "
        "mean of its elements, then the mean over chunks")
    decoupled: bool = opt(False, "decoupled PPO for stale data (experimental: unstable end to "
                          "end so far, see RESULTS.md): clip against the learner's "
                          "weights at the update's start, weight by pi_prox / pi_behav")
    behav_weight_cap: float = opt(2.0, "decoupled: truncate pi_prox / pi_behav at this "
                                  "(<= 0: no truncation)")
    max_staleness: int = opt(4, "drop episodes acted by weights older than this many versions")
    sync_every: int = opt(1, "K: broadcast weights every K updates")
    max_ready_groups: int = opt(16, "complete groups buffered before actors are held back")
    checkpoint: bool = opt(True, "save log_dir/checkpoint.pt (weights, optimizer, schedule, "
                           "counters) at exit")
    checkpoint_every: int = opt(100, "also save it every this many updates (0: not by "
                                "count)")
    keep_checkpoints: bool = opt(False, "keep each save made by checkpoint_every as "
                                 "log_dir/checkpoints/update-NNNNNN.pt too: a run's history, "
                                 "each loadable with model.checkpoint (e.g. to evaluate it in "
                                 "the real simulator)")
    checkpoint_every_s: float = opt(300.0, "also save it when this many seconds have passed "
                                    "since the last save (0: not by time): a learner that "
                                    "dies and is restarted resumes from it, losing at most "
                                    "this much training")
    update_sleep_s: float = opt(0.0, "sleep this long after each update: a slow learner, "
                                "to test stale-data handling")
    stall_report_s: float = opt(600.0, "when the training loop has not come round for this "
                                "long (an update, a checkpoint, a wait for data included), "
                                "write every thread's stack to log_dir/stalls-learner.txt, "
                                "and again every as long while it stays stuck (0: never)")
    ppo: PPOConfig = field(default_factory=PPOConfig,
                           metadata={"doc": "learner.algorithm=ppo only"})
    grpo: GRPOConfig = field(default_factory=GRPOConfig,
                             metadata={"doc": "learner.algorithm=grpo only"})


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: every task x trial once, deterministic (run.mode=eval), and rounds of it
    during training (every_updates), by actors set aside for it."""

    num_trials: int = opt(50, "trials per task; trial k starts from init state first_state + k")
    first_state: int = opt(0, "state index of trial 0 (0: the evaluation states; above "
                           "them, e.g. 700, only with env.held_out_eval_states=false: more "
                           "trials of a policy no real-env training or recording saw those "
                           "states for, such as one trained in a world model)")
    results_name: str = opt("eval_results", "log_dir/<name>.json and .md hold the table")
    every_updates: int = opt(0, "training: every this many updates (and before the first "
                             "and after the last) evaluation actors run every task x "
                             "trial once with the current weights, logged as eval/* (0: "
                             "never)")
    actors: int = opt(1, "training with every_updates: actor processes set aside for "
                      "evaluation (actor indices after actor.num_actors)")
    envs_per_actor: int = opt(4, "training with every_updates: envs of each evaluation actor")
    trials_during_training: int = opt(0, "training with every_updates: trials per task of "
                                      "each round (0: num_trials)")
    pause_training: bool = opt(True, "training with every_updates: no update while a round "
                               "runs, so it evaluates exactly the round's weights (false: "
                               "training goes on; a round may see several versions)")


@dataclass(frozen=True)
class RecordConfig:
    """Recording demonstrations (run.mode=record): every task x episode once, each episode
    written with every simulator step to LIBERO's HDF5 layout (demos/layout.py)."""

    source: Literal["expert", "policy"] = opt(
        "expert", "expert: the scripted expert of the task (experts/, privileged state; no "
        "inference server); policy: the configured model (model.checkpoint) via the "
        "inference servers")
    episodes_per_task: int = opt(50, "episodes recorded per task")
    first_state: int = opt(100, "state index of each task's first episode; episode k "
                           "starts from state first_state + k (>= 100: never an "
                           "evaluation trial's)")
    action_noise: float = opt(0.0, "std of Gaussian noise added to the arm dims of every "
                              "executed action (weaker, more varied demonstrations)")
    dataset_dir: str = opt("", "where the episode files go (empty: log_dir/dataset)")
    compression: int = opt(1, "gzip level of the image datasets (0: uncompressed)")
    max_pending: int = opt(16, "finished episodes waiting for the writer thread before "
                           "the actor waits for it")


@dataclass(frozen=True)
class SFTConfig:
    """Behaviour cloning (run.mode=sft) on recorded demonstrations: action chunks of T
    from every step; validation on held-out episodes; checkpoint + dataset statistics."""

    datasets: list[str] = opt([], "HDF5 files or folders of them (chunkrl's recordings or "
                              "LIBERO's released files)")
    only_successes: bool = opt(True, "train on successful episodes only")
    max_episodes: int = opt(0, "use at most this many episodes per task (0: all), drawn "
                            "with run.seed: fewer demonstrations, a weaker policy")
    val_fraction: float = opt(0.1, "share of episodes held out for the validation loss")
    steps: int = opt(2000, "optimizer steps")
    batch_size: int = opt(64, "samples (one step's observation and its chunk) per step")
    lr: float = opt(1e-3, "AdamW peak learning rate")
    lr_warmup_steps: int = opt(100, "linear warmup from 0")
    min_lr_ratio: float = opt(0.1, "cosine decay to this share of lr at the last step")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping by global norm")
    loss: Literal["auto", "nll", "mse"] = opt(
        "auto", "auto: the model's own (cnn_gaussian: Gaussian NLL, qwen_oft: L1 on the "
        "chunk, openvla_oft: cross-entropy on the action tokens); cnn_gaussian: nll or mse")
    final_log_std: float = opt(0.0, "cnn_gaussian: set the log-std to this after training "
                               "(the RL exploration noise; 0: keep the learned one)")
    random_shift: int = opt(4, "image augmentation: random shifts of up to this many "
                            "pixels (0: none)")
    pad_chunks: bool = opt(True, "a chunk that runs past the episode's end is padded with "
                           "its last action and trained on (as if the demonstrator held "
                           "it); false: the padding is masked out of the loss")
    val_every: int = opt(200, "steps between validation losses")
    checkpoint_every: int = opt(500, "steps between checkpoints (resumable)")
    unnorm_key: str = opt("", "the key of dataset_statistics.json (empty: the env's "
                          "suite or task, e.g. libero_spatial, robosuite_lift)")
    drawn_frames: str = opt("", "a world_model.pt with a state decoder: drawn_share of the "
                            "training samples show the main camera it draws from the "
                            "step's recorded simulator state instead of the real frame, so "
                            "that the policy acts alike on a world model's drawn frames "
                            "(env.world_model.frames=state) and on real ones (sft/drawn.py; on "
                            "Lift 0.5 of a decoder without fingers: 0% real, RESULTS.md); "
                            "needs chunkrl's robosuite/LIBERO recordings; empty: real frames")
    drawn_share: float = opt(0.5, "with drawn_frames: the share of samples shown the drawn "
                             "frame")


@dataclass(frozen=True)
class StateModelConfig:
    """The world model's state model (worldmodel/state_model.py): the simulator's state
    predicted from the actions, and a success classifier on it; a judge that reads no
    generated frame (env.world_model.judge)."""

    steps: int = opt(0, "optimizer steps, trained after the success model on the "
                     "datasets' simulator states (robosuite/LIBERO recordings keep them); "
                     "0: no state model")
    horizon: int = opt(8, "steps unrolled on the model's own predictions per training "
                       "window")
    hidden: int = opt(512, "width of the dynamics MLP's three hidden layers (the success "
                      "classifier's: half)")
    batch_size: int = opt(256, "windows per step")
    lr: float = opt(1e-3, "AdamW learning rate, cosine decay")
    ensemble: int = opt(1, "members K: K state models, each from its own initial weights "
                        "on its own bootstrap resample of the training episodes (K > 1), "
                        "each unrolling its own state in the env; success only where "
                        "every member predicts it (the lowest probability), the members' "
                        "mean state drawn (worldmodel/ensemble.py); K times the steps")
    proprio: bool = opt(False, "also learn the policy's proprioception (the recordings' "
                        "state vector: obs/states or ee_states + gripper_states) from the "
                        "simulator state, which "
                        "env.world_model.proprio=state hands the policy")
    kinematics: bool = opt(False, "the dynamics also read every moving body's position "
                           "(and the objects' relative to the others) by forward "
                           "kinematics of the recordings' robosuite scene "
                           "(worldmodel/kinematics.py; the tree is kept in the checkpoint)")
    kinematic_weight: float = opt(0.0, "with kinematics: the weight of the bodies' "
                                  "positions' error in predicted states (normalised as "
                                  "the dynamics read them) added to the dynamics loss")
    hypotheses: int = opt(1, "M > 1: stochastic dynamics, reading a latent of M values "
                          "drawn from a learned prior for every window of horizon steps "
                          "and trained winner-takes-all over the window (a grasp that "
                          "holds or slips keeps both outcomes instead of their mean; "
                          "worldmodel/state_model.py); 1: one deterministic prediction")


@dataclass(frozen=True)
class StateDecoderConfig:
    """The world model's state decoder (worldmodel/decoder.py): each camera's frame drawn
    from a simulator state, so that the env's frames follow the state model's predicted
    states (env.world_model.frames=state) instead of the frame predictor's own."""

    steps: int = opt(0, "optimizer steps, trained after the state model on the datasets' "
                     "frames and their recorded simulator states; 0: no decoder")
    channels: int = opt(32, "width of the last full upsampling level (x2, x4, x8 below it)")
    frequencies: int = opt(0, "octaves of the state's positional encoding (sin and cos of "
                           "2^k x, k < F, per entry); 0: the state alone (on Lift 6 drew "
                           "held-out frames 1 dB worse: RESULTS.md)")
    batch_size: int = opt(32, "frames per step")
    lr: float = opt(1e-3, "AdamW learning rate, cosine decay")


@dataclass(frozen=True)
class WorldModelConfig:
    """Training a world model (run.mode=train_world_model) on recorded episodes: a frame
    predictor (the next chunk of frames from the last frames and the chunk's actions) and
    a success model (one frame -> the probability the task is achieved)."""

    datasets: list[str] = opt([], "HDF5 files or folders of recorded episodes (with their "
                              "final frames: chunkrl's recordings)")
    image_size: int = opt(64, "frames are resized to this square (the env's image size)")
    cameras: list[str] = opt(["main"], "the views the world model generates, stacked as "
                             "channels: [main] (RLinf's one camera), then any of wrist (the "
                             "policy gets its frames as its wrist camera) and the cameras "
                             "chunkrl adds to recordings (env.record_cameras, "
                             "envs/cameras.py, "
                             "scripts/render_camera.py: table_front sees Lift's 4 cm lift "
                             "from table height), which only the success model reads; the "
                             "predictor and the success model see every view; an episode "
                             "without each view's frame after its last action (recordings "
                             "keep them in final_obs, views rendered afterwards do not) "
                             "loses that action")
    generator: Literal["conv", "diffusion"] = opt(
        "conv", "the frame predictor: conv (deterministic U-Net, worldmodel/models.py) or "
        "diffusion (diffusers' UNet2DModel, DDIM sampling, worldmodel/diffusion.py)")
    sampling_steps: int = opt(4, "generator=diffusion: DDIM steps per generated chunk")
    condition_frames: int = opt(4, "frames the predictor is conditioned on (the first "
                                "frame repeated at a reset)")
    chunk: int = opt(8, "frames predicted per call, one per action; the actor's chunk "
                     "must be a multiple of it (1: one frame per call, run N times a chunk)")
    channels: int = opt(32, "width of the predictor's first level (doubled at each of "
                        "its three)")
    rollout_calls: int = opt(1, "generator=conv: predictor calls unrolled per training "
                             "window, each on the frames generated so far (gradients "
                             "through them): teaches it to correct its own drift; 1: "
                             "every call starts from real frames")
    rollout_after: int = opt(0, "with rollout_calls > 1: the predictor steps taken on "
                             "one-call windows first (from scratch, 8 unrolled calls "
                             "settled on copying the last frame: RESULTS.md)")
    init: str = opt("", "a world_model.pt to start from (its predictor, success model, "
                    "state model, decoder, widths and action bounds; its cameras, "
                    "image_size, condition_frames and chunk must be this section's): "
                    "fine-tunes it on world_model.datasets for steps, success_steps, "
                    "state.steps and decoder.steps, e.g. on the replays "
                    "benchmarks/bench_reward_agreement.py --record writes; empty: from "
                    "scratch")
    steps: int = opt(3000, "predictor optimizer steps (0 without init: an untrained "
                     "predictor, for a world model whose frames the simulator draws from "
                     "its state model: env.world_model.frames=simulator, judge=state)")
    batch_size: int = opt(32, "predictor windows per step")
    lr: float = opt(1e-3, "AdamW peak learning rate (both models), cosine decay")
    success_steps: int = opt(1500, "success-model optimizer steps")
    success_batch_size: int = opt(64, "success-model frames per step, half of them "
                                  "positive")
    success_channels: int = opt(16, "width of the success model's first convolution")
    generated_share: float = opt(
        0.5, "share of each success-model batch drawn from generated frames (each training "
        "episode rolled out open loop from its first frame with its actions, as the env "
        "does, each frame labelled by the real frame it stands for), so the model judges "
        "the frames RL shows it; 0: real frames only")
    success_hold: int = opt(0, "teach the success model success held this many steps: "
                            "a frame is positive once the task has shown achieved for "
                            "H+1 frames running, the frames before that are left out (for "
                            "a camera that hardly shows the task's boundary, as Lift's 4 "
                            "cm at 64 px; the recordings need env.success_hold_steps >= "
                            "H); 0: every achieved frame")
    val_fraction: float = opt(0.1, "share of episodes held out for the metrics")
    max_episodes: int = opt(0, "use at most this many episodes (0: all)")
    val_every: int = opt(250, "steps between held-out metrics")
    checkpoint_every: int = opt(500, "steps between checkpoints (resumable)")
    videos: int = opt(4, "held-out episodes rolled out side by side (real | generated, "
                      "the same actions) at the end, under log_dir/videos/world_model")
    position_dims: int = opt(2, "the first N entries of the state are the agent's or "
                             "gripper's position (synthetic: 2; robosuite/LIBERO: 3, the "
                             "end effector): a probe trained to read them from real frames "
                             "measures where generated frames put it (0: no probe)")
    probe_steps: int = opt(2000, "the position probe's optimizer steps (on the synthetic "
                           "task 500 left it 0.04-0.13 off on held-out real frames, 1500 "
                           "0.01)")
    state: StateModelConfig = field(default_factory=StateModelConfig,
                                    metadata={"doc": "the state model (env.world_model.judge"
                                              "=state or both)"})
    decoder: StateDecoderConfig = field(
        default_factory=StateDecoderConfig,
        metadata={"doc": "the state decoder (env.world_model.frames=state)"})


@dataclass(frozen=True)
class PlacementConfig:
    """Which of this host's GPUs each role's processes see (``CUDA_VISIBLE_DEVICES`` per
    child, launcher/placement.py); indices count the GPUs the launcher sees. Empty lists
    mean auto: the learner's ranks on GPUs 0..R-1, the servers on the others (sharing the
    learner's with no other), actors on the CPU."""

    learner: list[int] = opt([], "one GPU index per learner rank (learner.num_ranks); "
                             "empty: auto (GPUs 0..R-1)")
    inference: list[int] = opt([], "one GPU index per inference server; empty: auto (the "
                               "GPUs the learner does not use, round robin)")
    gpu_memory_gib: float = opt(0.0, "the memory each GPU role may use, checked against "
                                "the role's start-up estimate (models/memory.py), also on a "
                                "CPU: plan for a named GPU (80 for an H100); 0: the GPU's "
                                "free memory at start-up")


@dataclass(frozen=True)
class VideoConfig:
    """mp4 videos of the main camera, under log_dir/videos/."""

    train_every: int = opt(0, "record every n-th training episode of each actor (0: none)")
    eval_per_task: int = opt(1, "record the first k trials of each task in eval mode")
    fps: int = opt(20, "frames per second (one frame per env step)")
    max_frames: int = opt(600, "longer episodes keep every 2nd, 4th... frame")


@dataclass(frozen=True)
class ProfileConfig:
    """Throughput profiling (``launch.py --profile``): spans and samples from every role."""

    enabled: bool = opt(False, "record spans in every role; the run lasts duration_s and "
                        "ends with a report, a table and a Chrome trace (--profile)")
    duration_s: float = opt(60.0, "profiled run: seconds of training, then stop")
    warmup_s: float = opt(5.0, "rates and fractions leave out this long after every actor "
                          "has started stepping")
    max_events: int = opt(200_000, "spans (and samples of each kind) kept per role; the "
                          "rest are counted as dropped")
    min_span_us: float = opt(50.0, "shorter spans count in the totals but not in the trace")


@dataclass(frozen=True)
class Config:
    """The root: one section per role, plus the run and network."""

    run: RunConfig = field(default_factory=RunConfig, metadata={"doc": "the run"})
    network: NetworkConfig = field(default_factory=NetworkConfig,
                                   metadata={"doc": "addresses"})
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"doc": "environment"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "policy"})
    actor: ActorConfig = field(default_factory=ActorConfig, metadata={"doc": "actors"})
    inference: InferenceConfig = field(default_factory=InferenceConfig,
                                       metadata={"doc": "inference servers"})
    learner: LearnerConfig = field(default_factory=LearnerConfig, metadata={"doc": "learner"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"doc": "evaluation"})
    record: RecordConfig = field(default_factory=RecordConfig,
                                 metadata={"doc": "recording demonstrations"})
    sft: SFTConfig = field(default_factory=SFTConfig, metadata={"doc": "behaviour cloning"})
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig,
                                          metadata={"doc": "training a world model"})
    placement: PlacementConfig = field(default_factory=PlacementConfig,
                                       metadata={"doc": "GPUs per role"})
    video: VideoConfig = field(default_factory=VideoConfig, metadata={"doc": "videos"})
    profile: ProfileConfig = field(default_factory=ProfileConfig,
                                   metadata={"doc": "throughput profiling"})

    @property
    def actions_per_chunk(self) -> int:
        """N, with 0 resolved to T."""
        return self.actor.actions_per_chunk or self.model.num_action_chunks

    @property
    def time_limit_s(self) -> float:
        """Seconds of training before the learner stops (0: none); a profiled run lasts
        ``profile.duration_s`` whatever ``run.total_updates`` says."""
        return self.profile.duration_s if self.profile.enabled else self.run.max_duration_s

    @property
    def learner_ranks(self) -> int:
        """Learner processes this run starts: ``learner.num_ranks`` when training (an
        evaluation or a recording has one learner)."""
        return self.learner.num_ranks if self.run.mode == "train" else 1

    @property
    def incarnation(self) -> int:
        """This process start, unique within the run: ``run.incarnation << 8 | run.start``
        (the top bits of the ids of the episodes an actor makes, :mod:`protocol.ids`)."""
        return self.run.incarnation << 8 | self.run.start

    @property
    def eval_rounds(self) -> bool:
        """Training with evaluation rounds by actors set aside for them."""
        return self.run.mode == "train" and self.eval.every_updates > 0

    @property
    def total_actors(self) -> int:
        """Actor processes of the run: ``actor.num_actors``, then the evaluation actors."""
        return self.actor.num_actors + (self.eval.actors if self.eval_rounds else 0)

    def is_eval_actor(self, index: int) -> bool:
        """Actor ``index`` runs evaluation rounds (indices after ``actor.num_actors``)."""
        return self.eval_rounds and index >= self.actor.num_actors

    @property
    def inference_needed(self) -> bool:
        """Whether the run has inference servers (an expert's recording needs none)."""
        return not (self.run.mode == "record" and self.record.source == "expert")

    @property
    def update_limit(self) -> float:
        """Updates before the learner stops (unbounded in a profiled run)."""
        return float("inf") if self.profile.enabled else self.run.total_updates


# The simulator gripper mapping each VLA family's output needs (envs/robot_io.py).
VLA_GRIPPER_CONVENTION = {"qwen_oft": "starvla", "openvla_oft": "openvla",
                          "token_ar": "openvla"}


def validate(cfg: Config) -> list[str]:
    """Every rule the values must obey across sections; returns the broken ones."""
    a, m, L, i, e, n = cfg.actor, cfg.model, cfg.learner, cfg.inference, cfg.env, cfg.network
    s, r, ev = cfg.sft, cfg.record, cfg.eval
    w, wm = cfg.world_model, e.world_model
    from envs.cameras import CAMERAS  # here: envs imports configs

    checks = [
        (cfg.run.total_updates >= 1, "run.total_updates must be >= 1"),
        (i.backend != "vllm" or i.dtype == "fp32",
         "inference.backend=vllm serves in fp32 here: set inference.dtype=fp32"),
        (L.num_ranks >= 1, "learner.num_ranks must be >= 1"),
        (w.rollout_calls >= 1 and (w.rollout_calls == 1 or w.generator == "conv"),
         "world_model.rollout_calls must be >= 1, and 1 with generator=diffusion"),
        (L.sharding == "replicate" or L.num_ranks > 1,
         "learner.sharding=fsdp shards over learner.num_ranks ranks: set num_ranks >= 2"),
        (L.num_ranks == 1 or n.transport != "inproc",
         "--single-process runs one learner: set learner.num_ranks=1"),
        (not cfg.placement.learner or len(cfg.placement.learner) == L.num_ranks,
         f"placement.learner takes one GPU index per learner rank ({L.num_ranks}, "
         "learner.num_ranks)"),
        (all(g >= 0 for g in (*cfg.placement.learner, *cfg.placement.inference)),
         "placement GPU indices must be >= 0"),
        (cfg.placement.gpu_memory_gib >= 0, "placement.gpu_memory_gib must be >= 0 (0: the "
         "GPU's free memory)"),
        (a.num_actors >= 1, "actor.num_actors must be >= 1"),
        (a.group_size >= 1, "actor.group_size must be >= 1"),
        (a.pipeline_stages >= 1, "actor.pipeline_stages must be >= 1"),
        (a.envs_per_actor % (a.pipeline_stages * a.group_size) == 0,
         f"actor.envs_per_actor ({a.envs_per_actor}) must be a multiple of "
         f"pipeline_stages*group_size ({a.pipeline_stages}*{a.group_size}): "
         "each stage holds whole groups"),
        (0 <= a.actions_per_chunk <= m.num_action_chunks,
         f"actor.actions_per_chunk must be in 1..{m.num_action_chunks} (or 0 for all)"),
        (a.max_unacked_episodes >= a.group_size,
         "actor.max_unacked_episodes must hold at least one group"),
        (m.num_action_chunks >= 1 and m.action_dim >= 2, "model needs T >= 1 and D >= 2"),
        (m.kind == "cnn_gaussian" or m.model_path, f"model.kind={m.kind} needs model.model_path"),
        (m.kind != "cnn_gaussian" or not m.model_path,
         "model.model_path is set but model.kind=cnn_gaussian; set model.kind (RLinf: "
         "actor.model.model_type) to qwen_oft, openvla_oft or token_ar"),
        (e.kind == "synthetic" or e.gripper_convention ==
         VLA_GRIPPER_CONVENTION.get(m.kind, e.gripper_convention),
         f"model.kind={m.kind} emits its gripper in [0,1] with 1 = open: set "
         f"env.gripper_convention={VLA_GRIPPER_CONVENTION.get(m.kind)}"),
        (m.top_k >= 0 and not (m.lora_rank and m.lora_path),
         "model.top_k >= 0; set model.lora_rank or model.lora_path, not both"),
        (m.starvla.expected_action_dim in (0, m.action_dim),
         f"model.starvla.expected_action_dim={m.starvla.expected_action_dim} but "
         f"model.action_dim={m.action_dim}"),
        (m.starvla.expected_num_action_chunks in (0, m.num_action_chunks),
         f"model.starvla.expected_num_action_chunks={m.starvla.expected_num_action_chunks} "
         f"but model.num_action_chunks={m.num_action_chunks}"),
        (m.lora_rank >= 0, "model.lora_rank must be >= 0"),
        (m.cnn.image_resolution >= 8 and m.cnn.image_resolution % 2 == 0,
         "model.cnn.image_resolution must be even and >= 8"),
        (not (m.kind == "cnn_gaussian" and m.cnn.read_state and e.kind == "world_model" and
              e.world_model.proprio == "zeros"),
         "env.kind=world_model gives zero states but model.cnn.read_state=true: a policy "
         "that learned from the real env's state would read zeros; set "
         "model.cnn.read_state=false (and behaviour-clone with it), or hand it the "
         "predicted state's proprioception (env.world_model.proprio=state)"),
        (not (m.kind == "cnn_gaussian" and m.cnn.wrist_camera) or e.wrist_camera,
         "model.cnn.wrist_camera=true but the env sends no wrist camera; set "
         "env.wrist_camera=true"),
        (i.num_servers >= 1, "inference.num_servers must be >= 1"),
        (i.max_batch >= 1 and i.max_wait_ms >= 0, "inference.max_batch >= 1, max_wait_ms >= 0"),
        (i.temperature > 0, "inference.temperature must be > 0"),
        (i.backend == "torch" or (m.kind == "token_ar" and not m.value_head),
         "inference.backend=vllm serves model.kind=token_ar without a value head (vLLM "
         "returns tokens, not hidden states): set model.kind=token_ar and use GRPO, or "
         "inference.backend=torch"),
        (i.vllm.max_model_len > m.num_action_chunks * m.action_dim and i.vllm.kv_cache_mb >= 1
         and i.vllm.block_size % 32 == 0 and i.vllm.block_size >= 0,
         "inference.vllm: max_model_len must exceed T*D, kv_cache_mb be >= 1, block_size a "
         "multiple of 32 (or 0)"),
        (len(n.inference_hosts) in (1, i.num_servers),
         "network.inference_hosts needs one host, or one per inference server"),
        (L.lr > 0 and L.micro_batch_size >= 1 and L.groups_per_update >= 1,
         "learner.lr > 0, micro_batch_size >= 1 and groups_per_update >= 1"),
        (L.sync_every >= 1 and L.max_staleness >= 0 and L.update_epochs >= 1,
         "learner.sync_every >= 1, max_staleness >= 0, update_epochs >= 1"),
        (L.algorithm != "ppo" or m.value_head,
         "learner.algorithm=ppo needs a value head: set model.value_head=true"),
        (0 < L.ppo.gamma <= 1 and 0 <= L.ppo.gae_lambda <= 1 and L.ppo.value_clip > 0 and
         L.ppo.huber_delta > 0 and L.ppo.value_coef >= 0, "learner.ppo: 0 < gamma <= 1, "
         "0 <= gae_lambda <= 1, value_clip > 0, huber_delta > 0, value_coef >= 0"),
        (min(L.lr_warmup_steps, L.lr_decay_steps, L.ppo.critic_lr_warmup_steps,
             L.ppo.critic_warmup_updates, L.global_batch_size, L.checkpoint_every,
             L.checkpoint_every_s) >= 0 and
         L.ppo.critic_lr >= 0 and L.kl_beta >= 0 and 0 <= L.min_lr_ratio <= 1 and
         L.update_sleep_s >= 0 and L.stall_report_s >= 0, "learner: steps, sizes, "
         "ppo.critic_lr, kl_beta, update_sleep_s and stall_report_s must be >= 0; "
         "min_lr_ratio in [0, 1]"),
        (0 <= cfg.run.incarnation <= ids.MAX_INCARNATION >> 8 and 0 <= cfg.run.start < 256,
         f"run.incarnation must be in 0..{ids.MAX_INCARNATION >> 8} and run.start in "
         "0..255 (start a new run directory)"),
        (cfg.run.max_restarts >= 0 and cfg.run.restart_backoff_s >= 0,
         "run.max_restarts and run.restart_backoff_s must be >= 0"),
        (min(n.heartbeat_s, n.join_timeout_s, n.learner_wait_s) > 0 and
         n.heartbeat_timeout_s > 2 * n.heartbeat_s, "network: heartbeat_s, join_timeout_s and "
         "learner_wait_s > 0; heartbeat_timeout_s > 2 * heartbeat_s"),
        (0 < a.request_retry_s <= a.request_timeout_s,
         "actor.request_retry_s must be in (0, request_timeout_s]"),
        (L.max_ready_groups >= L.groups_per_update,
         "learner.max_ready_groups must be >= groups_per_update"),
        (e.image_size >= 16 and e.max_episode_steps >= 0,
         "env.image_size >= 16 and env.max_episode_steps >= 0"),
        (e.state_dim in (7, 8) and (e.kind != "synthetic" or e.state_dim == 8),
         "env.state_dim must be 8 or 7 (7 only for libero/robosuite)"),
        (e.settle_steps >= 0, "env.settle_steps must be >= 0"),
        (e.success_hold_steps >= 0, "env.success_hold_steps must be >= 0"),
        (not e.record_cameras or (e.kind == "robosuite" and set(e.record_cameras) <= set(CAMERAS)
                                  and len(set(e.record_cameras)) == len(e.record_cameras)),
         f"env.record_cameras={e.record_cameras}: robosuite only, each of "
         f"{', '.join(sorted(CAMERAS))} once"),
        (cfg.run.mode in ("train", "sft", "train_world_model") or a.group_size == 1,
         f"run.mode={cfg.run.mode} runs each task x episode once: set actor.group_size=1"),
        (1 <= cfg.eval.num_trials and 0 <= cfg.eval.first_state
         and cfg.eval.first_state + cfg.eval.num_trials <= INIT_STRIDE,
         f"eval: num_trials >= 1, first_state >= 0, their sum <= {INIT_STRIDE}"),
        (cfg.video.train_every >= 0 and cfg.video.eval_per_task >= 0 and cfg.video.fps >= 1
         and cfg.video.max_frames >= 1, "video: train_every, eval_per_task >= 0; fps, "
         "max_frames >= 1"),
        (1 <= e.synthetic.num_targets <= 6, "env.synthetic.num_targets must be in 1..6"),
        (n.max_message_mb >= 1 and n.high_water_mark >= 1, "network limits must be >= 1"),
        (cfg.run.max_duration_s >= 0, "run.max_duration_s must be >= 0"),
        (len(L.grpo.group_mean_bounds) in (0, 2) and list(L.grpo.group_mean_bounds) ==
         sorted(L.grpo.group_mean_bounds),
         "learner.grpo.group_mean_bounds: [] or [low, high], low <= high"),
        (cfg.run.mode != "sft" or bool(cfg.sft.datasets),
         "run.mode=sft needs sft.datasets: HDF5 files or folders (a record run's dataset)"),
        (s.steps >= 1 and s.batch_size >= 1 and s.lr > 0 and 0 <= s.val_fraction < 1 and
         s.val_every >= 1 and s.checkpoint_every >= 1 and s.random_shift >= 0 and
         s.max_episodes >= 0 and s.lr_warmup_steps >= 0 and 0 <= s.min_lr_ratio <= 1 and
         0 <= s.drawn_share <= 1,
         "sft: steps, batch_size, val_every, checkpoint_every >= 1; lr > 0; val_fraction in "
         "[0, 1); random_shift, max_episodes, lr_warmup_steps >= 0; min_lr_ratio, "
         "drawn_share in [0, 1]"),
        (s.loss == "auto" or m.kind == "cnn_gaussian",
         f"sft.loss={s.loss} is for cnn_gaussian; {m.kind} trains with its own (auto)"),
        (r.episodes_per_task >= 1 and r.first_state >= 0 and
         r.first_state + r.episodes_per_task <= INIT_STRIDE and r.action_noise >= 0 and
         0 <= r.compression <= 9 and r.max_pending >= 1,
         f"record: episodes_per_task >= 1, first_state >= 0 and their sum <= {INIT_STRIDE}, "
         "action_noise >= 0, compression in 0..9, max_pending >= 1"),
        (ev.every_updates >= 0 and ev.trials_during_training >= 0 and
         (not ev.every_updates or (ev.actors >= 1 and ev.envs_per_actor >= 1 and
                                   ev.envs_per_actor % a.pipeline_stages == 0)),
         "eval: every_updates, trials_during_training >= 0; with every_updates, actors >= 1 "
         "and envs_per_actor a multiple of actor.pipeline_stages"),
        (not e.held_out_eval_states or ev.first_state + max(ev.num_trials,
                                                            ev.trials_during_training)
         <= EVAL_STATES, f"env.held_out_eval_states keeps state indices below {EVAL_STATES} "
         f"for evaluation: eval.first_state + num_trials must be <= {EVAL_STATES} (or set "
         "env.held_out_eval_states=false)"),
        (cfg.run.mode != "train_world_model" or bool(w.datasets),
         "run.mode=train_world_model needs world_model.datasets: HDF5 files or folders (a "
         "record run's dataset)"),
        (w.image_size >= 16 and w.image_size % 8 == 0 and w.condition_frames >= 1 and
         w.chunk >= 1 and w.channels >= 4 and w.success_channels >= 4 and
         w.sampling_steps >= 1 and
         min(w.batch_size, w.success_batch_size, w.val_every, w.checkpoint_every) >= 1 and
         min(w.steps, w.success_steps) >= (0 if w.init or w.state.steps else 1) and
         w.lr > 0 and 0 <= w.val_fraction < 1 and
         min(w.max_episodes, w.videos, w.position_dims, w.probe_steps,
             w.success_hold) >= 0,
         "world_model: image_size a multiple of 8 and >= 16; condition_frames, chunk, "
         "sampling_steps, steps and success_steps (>= 0 with init or state.steps), "
         "batch sizes, val_every, checkpoint_every >= 1; channels >= 4; lr > 0; "
         "val_fraction in [0, 1); max_episodes, videos, position_dims, probe_steps, "
         "success_hold >= 0"),
        (min(w.state.steps, w.state.hidden - 1, w.state.horizon - 1,
             w.state.batch_size - 1, w.state.ensemble - 1, w.state.hypotheses - 1) >= 0 and
         w.state.lr > 0 and
         w.state.kinematic_weight >= 0 and (w.state.kinematics or not w.state.kinematic_weight),
         "world_model.state: steps >= 0; horizon, hidden, batch_size, ensemble, hypotheses "
         ">= 1; lr > 0; "
         "kinematic_weight >= 0, and above 0 only with kinematics=true"),
        (min(w.decoder.steps, w.decoder.batch_size - 1, w.decoder.frequencies) >= 0 and
         w.decoder.channels >= 8
         and w.decoder.channels % 8 == 0 and w.decoder.lr > 0 and
         (not w.decoder.steps or w.image_size & (w.image_size - 1) == 0),
         "world_model.decoder: steps, frequencies >= 0; batch_size >= 1; channels a multiple "
         "of 8; lr > 0;"
         " it draws frames of a power of two (world_model.image_size 16, 32, 64, 128...)"),
        (w.cameras[:1] == ["main"] and len(set(w.cameras)) == len(w.cameras)
         and set(w.cameras[1:]) <= {"wrist", *CAMERAS},
         f"world_model.cameras={w.cameras}: main first, then any of wrist, "
         f"{', '.join(sorted(CAMERAS))}, each once"),
        (cfg.run.mode != "train_world_model" or cfg.actions_per_chunk % w.chunk == 0,
         f"world_model.chunk={w.chunk} must divide the actor's chunk of "
         f"{cfg.actions_per_chunk} actions (the held-out metrics and the env run whole ones)"),
        (e.kind != "world_model" or (bool(wm.checkpoint) and bool(wm.reset_data)),
         "env.kind=world_model needs env.world_model.checkpoint (a train_world_model run's "
         "world_model.pt) and env.world_model.reset_data (episodes to reset from)"),
        (e.kind != "world_model" or cfg.run.mode != "record",
         "run.mode=record records the real simulator: env.kind=world_model generates its "
         "frames chunk by chunk"),
        (0 < wm.success_threshold <= 1 and wm.reward_coef > 0 and wm.success_frames >= 1,
         "env.world_model: success_threshold in (0, 1], reward_coef > 0, success_frames >= 1"),
        (0 <= wm.branch.share <= 1 and wm.branch.every >= 1 and wm.branch.before_success >= 0
         # RL is what branches: the other modes (the world model's training, evaluation)
         # take the same overrides and never reset from a branch
         and (e.kind != "world_model" or cfg.run.mode != "train" or not wm.branch.share
              or bool(wm.branch.data)),
         "env.world_model.branch: share in [0, 1], every >= 1, before_success >= 0; share > 0 "
         "needs data (recordings with simulator states to branch from) for RL in the world "
         "model"),
        (cfg.profile.duration_s > 0 and cfg.profile.warmup_s >= 0 and
         cfg.profile.max_events >= 1 and cfg.profile.min_span_us >= 0,
         "profile.duration_s > 0, warmup_s >= 0, max_events >= 1, min_span_us >= 0"),
    ]
    return [msg for ok, msg in checks if not ok]
