"""An actor-side client of a chunkrl inference server, written from protocol/README.md alone.

It imports nothing from chunkrl (only pyzmq, msgpack and numpy), as a client in another
language would: it builds the header and frames by hand (sections 2-3), sends an
``ObsRequest`` and reads the ``ActionReply``, then sends a few broken messages and reads
the ``ErrorReply`` codes (section 5). It prints one JSON object with what it got.

    python examples/standalone_client.py --address ipc:///tmp/.../inference-0.sock \\
        --run RUN_ID --state-dim 8 --image-size 32
"""

from __future__ import annotations

import argparse
import json

import msgpack
import numpy as np
import zmq

SCHEMA = 5  # protocol/README.md, section 3


def frames_of(type_name: str, fields: dict, arrays: dict, run: str, seq: int,
              schema: int = SCHEMA) -> list[bytes]:
    """Header (msgpack map of exactly seven keys) + one raw frame per array, in order."""
    descriptors, buffers = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        descriptors.append({"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                            "nbytes": arr.nbytes})
        buffers.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    header = {"schema": schema, "type": type_name, "sender": "actor-0", "run": run,
              "seq": seq, "fields": fields, "arrays": descriptors}
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def read(frames: list[bytes]) -> dict:
    """A received message: its type, header fields, and arrays rebuilt from their frames."""
    header = msgpack.unpackb(frames[0], raw=False)
    out = {"type": header["type"], **header["fields"]}
    for desc, frame in zip(header["arrays"], frames[1:]):
        out[desc["name"]] = np.frombuffer(frame, np.dtype(desc["dtype"]).newbyteorder("<")) \
            .reshape(desc["shape"])
    return out


def main() -> None:
    """Ask for chunks, then send broken messages; print what came back as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True)
    p.add_argument("--run", required=True, help="the run id (run.run_id)")
    p.add_argument("--state-dim", type=int, required=True)
    p.add_argument("--image-size", type=int, required=True)
    args = p.parse_args()

    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"actor-0")  # section 1: actor DEALERs are actor-K
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.address)

    def ask(frames: list[bytes]) -> dict:
        sock.send_multipart(frames)
        if not sock.poll(60_000):
            raise SystemExit("no answer from the inference server in 60 s")
        return read(sock.recv_multipart())

    b, s = 2, args.image_size
    images = np.random.default_rng(0).integers(0, 256, (b, s, s, 3), dtype=np.uint8)
    fields = {"request_id": 7, "deterministic": True,
              "task_descriptions": ["pick up the bowl", "open the drawer"]}
    arrays = {"main_images": images, "states": np.zeros((b, args.state_dim), np.float32)}
    reply = ask(frames_of("ObsRequest", fields, arrays, args.run, 1))
    result = {"reply": {"type": reply["type"], "request_id": reply.get("request_id"),
                        "actions_shape": list(reply["actions"].shape),
                        "logprobs_shape": list(reply["logprobs"].shape),
                        "finite": bool(np.isfinite(reply["actions"]).all())}}

    broken = {
        "old_schema": frames_of("ObsRequest", fields, arrays, args.run, 2, schema=1),
        "wrong_run": frames_of("ObsRequest", fields, arrays, "not-this-run", 3),
        "float64_states": frames_of("ObsRequest", dict(fields, request_id=8),
                                    dict(arrays, states=arrays["states"].astype(np.float64)),
                                    args.run, 4),
        "one_description_for_two_rows": frames_of(
            "ObsRequest", dict(fields, request_id=9, task_descriptions=["pick"]), arrays,
            args.run, 5),
        "missing_states": frames_of("ObsRequest", dict(fields, request_id=10),
                                    {"main_images": images}, args.run, 6),
    }
    result["errors"] = {}
    for name, frames in broken.items():
        answer = ask(frames)
        result["errors"][name] = {"type": answer["type"], "code": answer.get("code"),
                                  "request_id": answer.get("request_id")}
    # The server kept serving: the same good request again.
    again = ask(frames_of("ObsRequest", dict(fields, request_id=11), arrays, args.run, 7))
    result["after_errors"] = {"type": again["type"], "request_id": again.get("request_id")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
