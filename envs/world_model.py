"""A learned simulator behind the env contract: RLinf's OpenSora world-model env, with
chunkrl's (or any :class:`worldmodel.models.WorldModel`'s) generator and success model.

- **Reset**: initial state ``s`` of a group starts from reset frame ``s mod R`` of the R
  stored episodes (``env.world_model.reset_data``): its first frame, repeated K times as
  the history, and its instruction. Evaluation trial k is thus reset frame k. With
  ``branch.share`` p > 0, a training reset (state index >= EVAL_STATES) starts instead,
  with probability p, from a branch point (:func:`worldmodel.data.branch_frames`): a
  later state a recorded episode really reached (``branch.data``), its frame and
  simulator state, the step count going on from that step (MBPO's branched rollouts: the
  predicted state drifts over fewer steps). Which reset an id gets is fixed by the id.
- **Step**: one call per action chunk (``native_chunks``; :meth:`step` refuses single
  actions): the N actions, normalised with the model's q01/q99 and clipped to [-1, 1]
  (RLinf leaves them unclipped), and the last K frames
  give N new frames in one batched forward (N / T forwards of a model generating T < N
  frames at a time); the last K of them condition the next chunk.
  With ``frames: state`` the world model's state model (:mod:`worldmodel.state_model`)
  moves the simulator state it predicts (from the reset frame's recorded one) on by the
  chunk's actions, and its decoder (:mod:`worldmodel.decoder`) draws each new state's
  frames: they drift only as far as the predicted state does, never by compounding their
  own pixels (the frame predictor is not used). With ``frames: simulator`` the same
  predicted state is drawn by the real simulator's renderer (:mod:`envs.sim_view`: MuJoCo
  set to that state, forward kinematics, no physics step), for each chunk's last state
  only: the frame the policy acts on (the chunk's other steps show it too).
- **Reward**: the success model gives each new frame a probability ``p`` with the env's
  instruction (``judge`` ``frames``, RLinf's); with ``state`` the world model's state
  model (:mod:`worldmodel.state_model`) gives it instead, for the simulator state it
  predicts from the reset frame's recorded state and every action since (a state
  ensemble, ``world_model.state.ensemble`` K > 1, :mod:`worldmodel.ensemble`: each member
  unrolls its own state and the lowest member's ``p`` counts, while frames and
  proprioception show the members' mean state), and with ``both`` ``p`` is the lower of
  the two; with ``simulator`` ``p`` is 1 where the real simulator's own success check holds
  in the predicted state (the members' mean; :mod:`envs.sim_view`, no physics step), else
  0: the dynamics learned, the success rule exact. Success (and termination) when ``p`` has
  reached ``success_threshold`` on
  the last ``success_frames`` frames of the episode (1: the frame itself);
  truncation at ``max_episode_steps``. The frame's score ``s`` is 1 on success, else 0
  (``binary_score``, as RLinf's ResnetRM's binary scores), or ``p`` itself; reward
  ``r_t = reward_coef * (s_t - s_{t-1})`` with ``s`` 0 at a reset, so an episode's
  return telescopes to ``reward_coef`` x its last score. (RLinf rounds ``p`` and then
  compares with 0.9: success at ``p >= 0.5``, which is ``success_threshold: 0.5`` here.)
- **Observation**: the last frame (the model's image size), and a state of zeros of the
  contract's size: the world model has no proprioception, as RLinf's; with ``proprio``
  ``state`` (a state model trained with ``world_model.state.proprio``) the policy's
  proprioception the state model reads off the simulator state it predicts, or with
  ``simulator`` the real simulator's reading of that state (exact forward kinematics). A
  world model of one camera (RLinf's) gives no wrist images; one that also generates the
  wrist camera (``world_model.cameras: [main, wrist]``) gives its wrist frames as the
  wrist camera's. Other generated views (``table_front``) are the success model's alone.
  With ``frames: simulator`` the policy sees what the simulator draws, its wrist camera
  included when ``env.wrist_camera``, at ``env.image_size`` (the real env's, not the
  world model's).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from typing_extensions import override

from envs.base import EVAL_STATES, EnvObs, StepResult, VectorEnv, split_init_state
from worldmodel.data import ResetFrame
from worldmodel.ensemble import as_ensemble
from worldmodel.models import WorldModel, to_images, to_model_frames

if TYPE_CHECKING:  # envs.sim imports MuJoCo's bindings, which fix the GL backend
    from envs.sim_view import SimulatorView

log = logging.getLogger(__name__)


def frame_success(probs: np.ndarray, threshold: float) -> np.ndarray:
    """The env's success rule for success-model probabilities: ``probs >= threshold``
    (for ``success_frames`` N > 1, applied to :func:`held_probs`)."""
    return probs >= threshold


def held_probs(probs: np.ndarray, frames: int) -> np.ndarray:
    """[...,L] -> [...,L]: at t, the lowest probability of frames t-N+1..t (N =
    ``frames``), 0 before the N-th frame: frame t ends N consecutive frames at the
    threshold when this reaches it (the env's rule)."""
    out = probs.copy()
    for back in range(1, frames):
        out[..., back:] = np.minimum(out[..., back:], probs[..., :-back])
    out[..., :frames - 1] = 0.0
    return out


class WorldModelVectorEnv(VectorEnv):
    """E envs whose frames a world model generates, a chunk at a time."""

    native_chunks = True

    def __init__(self, num_envs: int, group_size: int, model: WorldModel,
                 starts: list[ResetFrame], max_episode_steps: int, state_dim: int = 8,
                 action_dim: int = 7, reward_coef: float = 1.0,
                 success_threshold: float = 0.9, binary_score: bool = True,
                 device: str | torch.device = "cpu", held_out: bool = False,
                 success_frames: int = 1, judge: str = "frames", frames: str = "generator",
                 proprio: str = "zeros", view: SimulatorView | None = None,
                 branches: list[ResetFrame] = (), branch_share: float = 0.0):
        if num_envs % group_size:
            raise ValueError(f"num_envs {num_envs} is not a multiple of group_size {group_size}")
        if not starts:
            raise ValueError("a world-model env needs reset frames")
        if model.generator.action_dim != action_dim:
            raise ValueError(f"the world model takes {model.generator.action_dim}-D actions, "
                             f"the policy gives {action_dim}-D (model.action_dim)")
        if branch_share and not branches:
            raise ValueError("env.world_model.branch.share > 0 but branch.data holds no branch "
                             "point (a step before success, below max_episode_steps)")
        size, channels = model.image_size, 3 * len(model.cameras)
        for s in [*starts, *branches]:
            if s.frame.shape != (size, size, channels):
                raise ValueError(f"reset frame of {s.frame.shape}, the world model makes "
                                 f"{size}x{size}x{channels} frames ({'+'.join(model.cameras)})")
        never = model.untrained()
        if ("generator" in never and frames == "generator") or \
                ("scorer" in never and judge in ("frames", "both")):
            raise ValueError(f"env.world_model.frames={frames}, judge={judge} uses this world "
                             f"model's {' and '.join(sorted(never))}, which its training "
                             "left untrained (world_model.steps / success_steps 0): set "
                             "env.world_model.frames=simulator and judge=state")
        if judge != "frames" and model.state_model is None:
            raise ValueError(f"env.world_model.judge={judge} needs a world model with a state "
                             "model: train it with world_model.state.steps > 0")
        if frames == "state" and (model.state_model is None or model.decoder is None):
            raise ValueError("env.world_model.frames=state needs a world model with a state "
                             "model and a decoder: train it with world_model.state.steps > 0 "
                             "and world_model.decoder.steps > 0")
        if proprio == "state" and (model.state_model is None or
                                   model.state_model.proprio_dim != state_dim):
            raise ValueError(f"env.world_model.proprio=state needs a state model that reads "
                             f"the policy's {state_dim}-D state off the simulator's: train "
                             "it with world_model.state.proprio=true on recordings of that "
                             "state (env.state_dim)")
        if uses_simulator(judge, frames, proprio) and (view is None or
                                                       model.state_model is None):
            raise ValueError(f"env.world_model.judge={judge}, frames={frames}, proprio={proprio}"
                             " shows the state model's predicted states to the simulator: it "
                             "needs a world model with a state model and the simulator's scene")
        if frames == "simulator" and judge not in ("state", "simulator"):
            raise ValueError(f"env.world_model.frames=simulator draws one frame per chunk, "
                             f"which judge={judge} cannot score frame by frame: set "
                             "env.world_model.judge=state or simulator")
        uses_state = needs_sim_states(judge, frames, proprio)
        if uses_state and any(s.sim_state is None for s in [*starts, *branches]):
            raise ValueError(f"env.world_model.judge={judge}, frames={frames}, "
                             f"proprio={proprio} needs reset frames with their simulator "
                             "states (robosuite or LIBERO recordings)")
        self.judge, self.frames_from, self.proprio, self.view = judge, frames, proprio, view
        # the state model as an ensemble (one member: itself), and the simulator state each
        # of its K members predicts for each env [E,K,S] (None: not used)
        self.state_models = None if model.state_model is None else as_ensemble(model.state_model)
        self.sim = torch.zeros(num_envs, len(self.state_models), self.state_models.state_dim,
                               device=device) if uses_state else None
        self.num_envs, self.group_size = num_envs, group_size
        self.state_dim, self.action_dim = state_dim, action_dim
        self.max_episode_steps, self.held_out = max_episode_steps, held_out
        self.model, self.device = model.to(device).eval(), torch.device(device)
        self.chunk_size = model.chunk
        self.starts = starts
        self.branches, self.branch_share = list(branches), branch_share
        self.coef, self.threshold, self.binary = reward_coef, success_threshold, binary_score
        self.success_frames = success_frames
        wrist = model.cameras.index("wrist") if "wrist" in model.cameras else None
        k = model.condition_frames
        self.history = torch.zeros(num_envs, k, channels, size, size, device=self.device)
        if frames == "simulator":  # what the simulator draws: main, and wrist when asked
            wrist = 1 if view.wrist else None
            size, channels = view.image_size, 3 + 3 * view.wrist
        self.wrist = None if wrist is None else slice(3 * wrist, 3 * wrist + 3)
        self.last = np.zeros((num_envs, size, size, channels), np.uint8)  # every camera's
        # the simulator's reading of each env's predicted state (proprio: simulator)
        self.read_states = np.zeros((num_envs, state_dim), np.float32)
        # every camera's frames of the last step_chunk, uint8 [B,N,H,W,C] (to look at)
        self.chunk_views = np.zeros((0, 0, size, size, channels), np.uint8)
        self.score = np.zeros(num_envs, np.float32)
        self.streak = np.zeros(num_envs, np.int64)  # consecutive frames at the threshold
        self.steps = np.zeros(num_envs, np.int64)
        self.instructions = [""] * num_envs

    def start(self, init_state_id: int) -> ResetFrame:
        """Where ``init_state_id``'s episodes start: reset frame ``state index mod R``, or
        for a training id, with probability ``branch_share`` (drawn from the id), a branch
        point."""
        index = split_init_state(init_state_id)[1]
        if self.branch_share and index >= EVAL_STATES:
            rng = np.random.default_rng(init_state_id)
            if rng.random() < self.branch_share:
                return self.branches[int(rng.integers(len(self.branches)))]
        return self.starts[index % len(self.starts)]

    @override
    def reset_group(self, group: int, init_state_id: int) -> None:
        """The group's envs start from :meth:`start`'s frame and state."""
        start = self.start(init_state_id)
        envs = slice(group * self.group_size, (group + 1) * self.group_size)
        first = to_model_frames(start.frame).to(self.device)
        self.history[envs] = first[None, None]
        if self.frames_from != "simulator":  # else the simulator's view of it, below
            self.last[envs] = start.frame
        self.score[envs], self.steps[envs], self.streak[envs] = 0.0, start.step, 0
        if self.sim is not None:
            self.sim[envs] = torch.as_tensor(start.sim_state, device=self.device)
        if self.view is not None:
            self._look(np.arange(envs.start, envs.stop), start.sim_state[None])
        for e in range(envs.start, envs.stop):
            self.instructions[e] = start.instruction

    @override
    def step(self, env_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        raise NotImplementedError("the world-model env generates a whole chunk per call: "
                                  "use step_chunk (the actor does)")

    @override
    def step_chunk(self, env_ids: np.ndarray, actions: np.ndarray) -> list[StepResult]:
        """Generate the frames of each env's chunk (float32 [B,N,D], N a multiple of the
        model's chunk) and score them; see the module docstring for reward and success."""
        b, n = actions.shape[:2]
        ids = torch.as_tensor(env_ids, device=self.device)
        with torch.no_grad():
            # Clipped to the data's q01..q99, as OpenVLA's normalisation clips: a policy's
            # action beyond what the recordings hold is one the generator never learned
            # (a simulator clips what its actuators cannot do; the synthetic env at +-1).
            taken = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
            states = shown = None
            if self.sim is not None:  # the predicted simulator states after each action
                states = self.state_models.rollout(self.sim[ids], taken)  # [B,N,K,S]
                self.sim[ids] = states[:, -1]
                shown = self.state_models.mean(states)
            if self.frames_from == "simulator":
                frames = None
            elif self.frames_from == "state":
                frames = self.model.decoder.draw(shown)
            else:
                frames = self.model.generate(self.history[ids],
                                             self.model.normalise(taken).clamp(-1, 1))
            if frames is not None:
                k = self.model.condition_frames
                self.history[ids] = torch.cat([self.history[ids], frames], 1)[:, -k:]
            raw = self._probabilities(frames, states, env_ids, n)
        if self.view is not None:  # the chunk's last state, as the simulator shows it
            self._look(env_ids, shown[:, -1].cpu().numpy())
        if frames is None:
            images = np.repeat(self.last[env_ids][:, None], n, 1)
        else:
            images = to_images(frames)
        self.chunk_views = images
        above = frame_success(raw, self.threshold)
        out, done = [], np.zeros(b, bool)
        for t in range(n):
            res = StepResult(np.zeros(b, np.float32), np.zeros(b, bool), np.zeros(b, bool),
                             np.zeros(b, bool), [""] * b, images[:, t, ..., :3])
            live = np.flatnonzero(~done)
            e = env_ids[live]
            self.streak[e] = np.where(above[live, t], self.streak[e] + 1, 0)
            success = self.streak[e] >= self.success_frames
            s = success.astype(np.float32) if self.binary else raw[live, t]
            res.rewards[live] = self.coef * (s - self.score[e])
            self.score[e], self.steps[e] = s, self.steps[e] + 1
            self.last[e] = images[live, t]
            res.success[live] = success
            res.terminated[live] = res.success[live]
            res.truncated[live] = ~res.success[live] & (self.steps[e] >= self.max_episode_steps)
            done[live] |= res.terminated[live] | res.truncated[live]
            out.append(res)
        return out

    def _probabilities(self, frames: torch.Tensor | None, states: torch.Tensor | None,
                       env_ids: np.ndarray, n: int) -> np.ndarray:
        """The success probability [B,N] of each env's N new frames [B,N,C,H,W] by
        ``judge``, the state model's from its members' predicted ``states`` [B,N,K,S]
        (the lowest member's), the simulator's check 0 or 1 on their mean."""
        b = len(env_ids)
        if self.judge == "simulator":
            shown = self.state_models.mean(states).cpu().numpy()
            won = self.view.succeeded(shown.reshape(b * n, shown.shape[-1]))
            return won.reshape(b, n).astype(np.float32)
        if self.judge != "state":
            texts = [self.instructions[e] for e in env_ids for _ in range(n)]
            seen = self.model.scorer.score(frames.flatten(0, 1), texts).view(b, n).cpu().numpy()
            if self.judge == "frames":
                return seen
        predicted = torch.sigmoid(self.state_models.success_logits(states)).cpu().numpy()
        return predicted if self.judge == "state" else np.minimum(seen, predicted)

    @override
    def observe(self, env_ids: np.ndarray) -> EnvObs:
        """The last frame of each env (the main camera's, and the wrist camera's when the
        world model makes it), the states (zeros, or with ``proprio`` state the
        proprioception of each env's predicted simulator state), the instructions."""
        last = self.last[env_ids]
        if self.proprio == "simulator":
            states = self.read_states[env_ids]
        elif self.proprio == "state":
            with torch.no_grad():
                states = self.state_models.proprio(
                    self.sim[torch.as_tensor(env_ids, device=self.device)]).cpu().numpy()
        else:
            states = np.zeros((len(env_ids), self.state_dim), np.float32)
        return EnvObs(np.ascontiguousarray(last[..., :3]), states.astype(np.float32),
                      [self.instructions[e] for e in env_ids],
                      None if self.wrist is None else np.ascontiguousarray(last[..., self.wrist]))

    def _look(self, env_ids: np.ndarray, states: np.ndarray) -> None:
        """Keep the simulator's view of the predicted ``states`` (float [B or 1,S]) for
        envs ``env_ids``: the frames with ``frames: simulator``, the proprioception."""
        seen = self.view.look(states, draw=self.frames_from == "simulator")
        if self.frames_from == "simulator":
            self.last[env_ids, ..., :3] = seen.main
            if self.wrist is not None:
                self.last[env_ids, ..., self.wrist] = seen.wrist
        self.read_states[env_ids] = seen.states

    @override
    def frame(self, env_id: int) -> np.ndarray:
        return self.last[env_id, ..., :3].copy()

    @override
    def close(self) -> None:
        if self.view is not None:
            self.view.close()

    @override
    def task_info(self, init_state_id: int) -> dict:
        return {"env_name": "WorldModel", "problem_name": "world_model",
                "bddl_file_name": ""}


def needs_sim_states(judge: str, frames: str, proprio: str) -> bool:
    """Whether ``env.world_model``'s judge, frames and proprio read the state model's
    predicted simulator state (then every reset frame needs its recorded one)."""
    return judge != "frames" or frames != "generator" or proprio != "zeros"


def uses_simulator(judge: str, frames: str, proprio: str) -> bool:
    """Whether ``env.world_model``'s judge, frames or proprio are the real simulator's
    check, drawing or reading of the predicted state (:mod:`envs.sim_view`; it then
    builds the scene)."""
    return "simulator" in (judge, frames, proprio)


def make_world_model_env(cfg, num_envs: int, group_size: int, action_dim: int,
                         max_episode_steps: int, device: Optional[str] = None):
    """The env of ``cfg`` (an :class:`configs.EnvConfig` with kind world_model)."""
    from models import pick_device
    from worldmodel.data import branch_frames, reset_frames
    from worldmodel.models import WorldModel

    wm = cfg.world_model
    model = WorldModel.load(wm.checkpoint)
    if cfg.image_size != model.image_size and wm.frames != "simulator":
        raise ValueError(f"env.image_size={cfg.image_size} but the world model {wm.checkpoint}"
                         f" makes {model.image_size}x{model.image_size} frames: set "
                         f"env.image_size={model.image_size}")
    if wm.stats_path:
        low, high = read_action_bounds(wm.stats_path)
        model.action_low.copy_(torch.as_tensor(low))
        model.action_high.copy_(torch.as_tensor(high))
    from envs import image_orientation

    starts = reset_frames(wm.reset_data, model.image_size, image_orientation(cfg), model.cameras,
                          sim_states=needs_sim_states(wm.judge, wm.frames, wm.proprio))
    log.info("world-model env: %s (%dx%d frames, chunks of %d), %d reset frames",
             wm.checkpoint, model.image_size, model.image_size, model.chunk, len(starts))
    branches = []
    if wm.branch.share and wm.branch.data:  # (without data: not RL, the config checked)
        branches = [b for b in branch_frames(wm.branch.data, model.image_size, wm.branch.every,
                                             image_orientation(cfg), model.cameras,
                                             wm.branch.successes_only, wm.branch.before_success)
                    if b.step < max_episode_steps]
        log.info("world-model env: %.0f%% of training resets from %d branch points of %s",
                 100 * wm.branch.share, len(branches), wm.branch.data)
    view = None  # without a state model the env refuses the simulator's view itself
    if uses_simulator(wm.judge, wm.frames, wm.proprio) and model.state_model is not None:
        from envs.sim_view import scene_view

        view = scene_view(cfg, action_dim, model.state_model.state_dim)
    return WorldModelVectorEnv(num_envs, group_size, model, starts, max_episode_steps,
                               cfg.state_dim, action_dim, wm.reward_coef,
                               wm.success_threshold, wm.binary_score,
                               device or pick_device(wm.device), cfg.held_out_eval_states,
                               wm.success_frames, wm.judge, wm.frames, wm.proprio, view,
                               branches, wm.branch.share if wm.branch.data else 0.0)


def read_action_bounds(path: str) -> tuple[np.ndarray, np.ndarray]:
    """q01, q99 of the actions in a dataset_statistics.json: RLinf's flat layout
    (``{"action": {"q01", "q99"}}``) or OpenVLA's (one ``unnorm_key`` holding it)."""
    import json

    with open(path) as f:
        stats = json.load(f)
    if "action" not in stats and len(stats) == 1:
        stats = next(iter(stats.values()))
    try:
        return (np.asarray(stats["action"]["q01"], np.float32),
                np.asarray(stats["action"]["q99"], np.float32))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: no action q01/q99 (RLinf's {{'action': {{'q01', 'q99'}}}} "
                         "or OpenVLA's {key: {'action': ...}})") from exc
