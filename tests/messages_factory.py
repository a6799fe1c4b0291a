"""One valid instance of every wire message, for round trips and fuzzing."""

import numpy as np

from protocol.messages import (
    ActionReply, ActorDone, ActorHello, ErrorReply, EvalRound, Heartbeat, ObsRequest, Register,
    Roster, StopActors, Trajectory, TrajectoryAck,
)

rng = np.random.default_rng(0)


def obs_request(b=3, size=8, wrist=True, extra=True, request_id=7) -> ObsRequest:
    return ObsRequest(
        request_id=request_id, deterministic=False,
        task_descriptions=[f"move to the red square {i}" for i in range(b)],
        main_images=rng.integers(0, 255, (b, size, size, 3), dtype=np.uint8),
        states=rng.standard_normal((b, 8)).astype(np.float32),
        wrist_images=rng.integers(0, 255, (b, size, size, 3), dtype=np.uint8) if wrist
        else None,
        extra_view_images=rng.integers(0, 255, (b, 2, size, size, 3), dtype=np.uint8)
        if extra else None)


def trajectory(c=4, t=8, d=7, final=False) -> Trajectory:
    rewards = np.array([0, 0, 0, 1], np.float32)[:c]
    action_rewards = np.zeros((c, t), np.float32)
    action_rewards[:, 0] = rewards
    return Trajectory(
        episode_id=(1 << 32) | 5, group_id=(1 << 32) | 2, group_size=4, init_state_id=99,
        task_description="move to the blue square", env_steps=30, episode_return=1.0,
        success_once=True, truncated=False, env_error="",
        main_images=rng.integers(0, 255, (c, 16, 16, 3), dtype=np.uint8),
        states=rng.standard_normal((c, 8)).astype(np.float32),
        actions=rng.standard_normal((c, t, d)).astype(np.float32),
        logprobs=rng.standard_normal((c, t, d)).astype(np.float32),
        policy_versions=np.arange(c, dtype=np.int64),
        rewards=rewards, dones=np.arange(c) == c - 1,
        executed=np.full(c, t, np.int32), action_rewards=action_rewards, wrist_images=None,
        values=rng.standard_normal(c).astype(np.float32),
        final_main_image=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) if final else None,
        final_state=rng.standard_normal(8).astype(np.float32) if final else None)


def every_message() -> list:
    return [
        obs_request(), obs_request(wrist=False, extra=False),
        ActionReply(7, 3, rng.standard_normal((3, 8, 7)).astype(np.float32),
                    rng.standard_normal((3, 8, 7)).astype(np.float32), None),
        ActionReply(8, 4, np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.float32),
                    np.ones(1, np.float32)),
        ErrorReply(-1, "bad_shape", "states must be [B,S]"),
        ActorHello(3, 16, 8), trajectory(), trajectory(final=True), TrajectoryAck(12, True),
        StopActors("training finished"), EvalRound(2, 150), ActorDone(1, 100, 6400),
        Register("inference", 1, 257, "tcp://10.0.0.2:5553", 3),
        Register("actor", 0, 0, "", -1),
        Heartbeat("actor", 0, 3),
        Roster(12345, "tcp://10.0.0.1:5551", ["tcp://10.0.0.2:5553", ""],
               np.array([257, -1], np.int64), 4),
    ]
