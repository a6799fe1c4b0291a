"""Every message that crosses a socket, one frozen dataclass each.

Symbolic dimensions: B = environments in a request, C = chunks (policy steps) in an
episode, T = actions per chunk (``num_action_chunks``), D = action dimension,
S = state dimension, H/W = image height/width, V = extra camera views, N = inference
servers (``inference.num_servers``).
Optional arrays are ``None`` when absent and simply not sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from protocol.spec import array, scalar


# --- actor -> inference server (DEALER -> ROUTER) --------------------------------------

@dataclass(frozen=True)
class ObsRequest:
    """A batch of observations from one pipeline stage of one actor, asking for chunks."""

    direction: ClassVar[str] = "actor -> inference server"

    request_id: int = scalar(int, "actor-chosen id, echoed in the reply; unique per actor")
    deterministic: bool = scalar(bool, "true: the policy's mean/argmax action, no sampling")
    task_descriptions: list = scalar(list, "instruction of each env, length B", length="B")
    main_images: np.ndarray = array("uint8", ("B", "H", "W", 3), "main camera RGB, upright")
    states: np.ndarray = array("float32", ("B", "S"), "proprioceptive state")
    wrist_images: Optional[np.ndarray] = array(
        "uint8", ("B", "H", "W", 3), "wrist camera RGB, upright", optional=True)
    extra_view_images: Optional[np.ndarray] = array(
        "uint8", ("B", "V", "H", "W", 3), "further camera views", optional=True)


# --- inference server -> actor (ROUTER -> DEALER) --------------------------------------

@dataclass(frozen=True)
class ActionReply:
    """The action chunks for one ObsRequest, row i answering row i of the request."""

    direction: ClassVar[str] = "inference server -> actor"

    request_id: int = scalar(int, "the request_id of the ObsRequest answered")
    policy_version: int = scalar(int, "learner update count of the weights that acted")
    actions: np.ndarray = array("float32", ("B", "T", "D"), "action chunk, env units")
    logprobs: np.ndarray = array("float32", ("B", "T", "D"), "log-prob of each action dim")
    values: Optional[np.ndarray] = array(
        "float32", ("B",), "value estimate, when the model has a value head", optional=True)


@dataclass(frozen=True)
class ErrorReply:
    """Sent instead of a reply when a received message was rejected."""

    direction: ClassVar[str] = "inference server or learner -> actor"

    request_id: int = scalar(int, "request_id of the rejected message, -1 if unreadable")
    code: str = scalar(str, "machine-readable reason, e.g. 'bad_shape', 'too_large'")
    message: str = scalar(str, "one line for a human: what was wrong and how to fix it")


# --- actor <-> learner (DEALER <-> ROUTER) ---------------------------------------------

@dataclass(frozen=True)
class ActorHello:
    """First message of an actor to the learner, so the learner can address it."""

    direction: ClassVar[str] = "actor -> learner"

    actor_index: int = scalar(int, "index of the actor process, 0-based")
    num_envs: int = scalar(int, "environments this actor runs")
    group_size: int = scalar(int, "G: envs per GRPO group")


@dataclass(frozen=True)
class Trajectory:
    """One finished episode, one row per chunk (policy step)."""

    direction: ClassVar[str] = "actor -> learner"

    episode_id: int = scalar(
        int, "globally unique: incarnation << 48 | actor_index << 32 | actor's counter "
        "(incarnation: the actor process start, see Register; layout: protocol/ids.py)")
    group_id: int = scalar(
        int, "GRPO group: incarnation << 48 | actor_index << 32 | actor's group counter")
    group_size: int = scalar(int, "G: episodes that make the group complete")
    init_state_id: int = scalar(int, "id of the initial state shared by the group")
    task_description: str = scalar(str, "the instruction of the episode")
    env_steps: int = scalar(int, "environment steps executed in the episode")
    episode_return: float = scalar(float, "sum of rewards")
    success_once: bool = scalar(bool, "the task was achieved at some step")
    truncated: bool = scalar(bool, "ended by the step limit, not by success or failure")
    env_error: str = scalar(str, "empty, or why the simulator ended the episode")
    main_images: np.ndarray = array("uint8", ("C", "H", "W", 3), "main camera at chunk start")
    states: np.ndarray = array("float32", ("C", "S"), "state at chunk start")
    actions: np.ndarray = array("float32", ("C", "T", "D"), "the sampled chunk")
    logprobs: np.ndarray = array("float32", ("C", "T", "D"), "behaviour log-probs")
    policy_versions: np.ndarray = array("int64", ("C",), "version that produced each chunk")
    rewards: np.ndarray = array("float32", ("C",), "reward summed over executed actions")
    dones: np.ndarray = array("bool", ("C",), "the episode ended during this chunk")
    executed: np.ndarray = array("int32", ("C",), "actions of the chunk actually executed")
    action_rewards: np.ndarray = array(
        "float32", ("C", "T"), "reward of each action; 0 for actions not executed")
    wrist_images: Optional[np.ndarray] = array(
        "uint8", ("C", "H", "W", 3), "wrist camera at chunk start", optional=True)
    extra_view_images: Optional[np.ndarray] = array(
        "uint8", ("C", "V", "H", "W", 3), "further camera views at chunk start", optional=True)
    values: Optional[np.ndarray] = array("float32", ("C",), "behaviour value", optional=True)
    # PPO bootstraps a truncated episode from V(the state its last step reached):
    final_main_image: Optional[np.ndarray] = array(
        "uint8", ("H", "W", 3), "main camera after the last step, when truncated", optional=True)
    final_state: Optional[np.ndarray] = array(
        "float32", ("S",), "state after the last step, when truncated", optional=True)
    final_wrist_image: Optional[np.ndarray] = array(
        "uint8", ("H", "W", 3), "wrist camera after the last step, when truncated",
        optional=True)
    final_extra_view_images: Optional[np.ndarray] = array(
        "uint8", ("V", "H", "W", 3), "further views after the last step, when truncated",
        optional=True)


@dataclass(frozen=True)
class TrajectoryAck:
    """The learner has taken a Trajectory (or ActorDone); the actor may forget it."""

    direction: ClassVar[str] = "learner -> actor"

    episode_id: int = scalar(int, "the episode acknowledged; -1 acknowledges ActorDone")
    duplicate: bool = scalar(bool, "it had been received before and was not counted again")


@dataclass(frozen=True)
class StopActors:
    """The learner has finished: finish delivering what is done, then exit."""

    direction: ClassVar[str] = "learner -> actor"

    reason: str = scalar(str, "why, for the log")


@dataclass(frozen=True)
class EvalRound:
    """Run every evaluation trial once, deterministically, with weights of at least
    ``policy_version`` (resent when the actor says hello again). Only the actors set aside
    for evaluation (``actor_index >= actor.num_actors``, with ``eval.every_updates``) get it."""

    direction: ClassVar[str] = "learner -> evaluation actor"

    round: int = scalar(int, "the round's number, from 0; a repeated number is ignored")
    policy_version: int = scalar(int, "replies acted by older weights are asked again")


@dataclass(frozen=True)
class ActorDone:
    """An actor has delivered everything and is exiting."""

    direction: ClassVar[str] = "actor -> learner"

    actor_index: int = scalar(int, "index of the actor process, 0-based")
    episodes_sent: int = scalar(int, "finished episodes this actor delivered (acked)")
    env_steps: int = scalar(int, "environment steps this actor executed in total")


# --- inference server / actor <-> learner's rendezvous (DEALER <-> ROUTER) -------------

@dataclass(frozen=True)
class Register:
    """A process announces itself to the learner's rendezvous, at its start and again
    whenever the rendezvous does not know it (the learner restarted)."""

    direction: ClassVar[str] = "server or actor -> rendezvous"

    role: str = scalar(str, "'inference' or 'actor'")
    index: int = scalar(int, "index of the server or actor, 0-based")
    incarnation: int = scalar(
        int, "this process start: run.incarnation << 8 | run.start (0..32767)")
    address: str = scalar(str, "inference: the address actors connect to; actor: empty")
    lost_generation: int = scalar(
        int, "inference: the weights group it lost or failed to join, -1 if none; a "
        "repeated Register without one gets the same group again")


@dataclass(frozen=True)
class Heartbeat:
    """A registered process is alive (every network.heartbeat_s)."""

    direction: ClassVar[str] = "server or actor -> rendezvous"

    role: str = scalar(str, "'inference' or 'actor'")
    index: int = scalar(int, "index of the server or actor, 0-based")
    incarnation: int = scalar(int, "the incarnation it registered with")


@dataclass(frozen=True)
class Roster:
    """The rendezvous' answer to Register and Heartbeat: where every role is now."""

    direction: ClassVar[str] = "rendezvous -> server or actor"

    learner_start: int = scalar(int, "random id of the learner process; changes on restart")
    trajectory_address: str = scalar(str, "where actors connect their learner DEALER")
    inference_addresses: list = scalar(
        list, "address of server i, empty while it is not registered", length="N")
    inference_incarnations: np.ndarray = array(
        "int64", ("N",), "incarnation of server i, -1 while it is not registered")
    weights_generation: int = scalar(
        int, "inference: the weights group to join (-1 in replies to actors)")


MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (ObsRequest, ActionReply, ErrorReply, ActorHello, Trajectory,
                TrajectoryAck, StopActors, EvalRound, ActorDone, Register, Heartbeat, Roster)
}
