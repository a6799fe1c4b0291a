"""Write the parts of protocol/README.md that restate the code, from the code.

    python scripts/protocol_doc.py           # rewrite the generated blocks in place
    python scripts/protocol_doc.py --check   # exit 1 naming each stale block

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``:
``messages`` (section 6: every message type, its direction and fields, from
``protocol/messages.py``) and ``example`` (section 9: a tiny ObsRequest encoded by
``protocol/codec.py``, its header as JSON, byte by byte and as hex, and its array
frames) and ``accepts`` (the types each endpoint accepts, from ``links.wiring.ACCEPTS``).
The prose around them is checked by ``tests/test_protocol_doc.py``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

import msgpack
import numpy as np

from protocol.codec import encode
from protocol.messages import MESSAGE_TYPES, ObsRequest
from protocol.spec import ArraySpec, wire_fields

DOC = Path(__file__).resolve().parent.parent / "protocol" / "README.md"
KINDS = {int: "int", float: "float", bool: "bool", str: "str", list: "array of str"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("``", "`")


def _paragraph(text: str) -> str:
    return textwrap.fill(_cell(" ".join(text.split())), 92, break_on_hyphens=False)


def messages_block() -> str:
    """Section 6's tables: one per message type, rows in declaration order."""
    from protocol import messages
    dims = inspect.getdoc(messages).split("\n\n")[1]
    out = [_paragraph(dims), "",
           _paragraph('"header" = an entry of `header["fields"]`; "array" = a descriptor plus '
                      "a frame. Rows are in declaration order (the order the Python sender "
                      "uses). The `type` string is the class name.")]
    for name, cls in MESSAGE_TYPES.items():
        out += ["", f"### `{name}` ({cls.direction})", "", _paragraph(inspect.getdoc(cls)), "",
                "| field | carried as | type / dtype | shape | meaning |",
                "|---|---|---|---|---|"]
        for field, spec in wire_fields(cls):
            if isinstance(spec, ArraySpec):
                carried = "array, optional" if spec.optional else "array"
                kind = f"`{spec.dtype}`"
                shape = "`[" + ", ".join(str(d) for d in spec.shape) + "]`"
            else:
                carried, kind = "header", KINDS[spec.kind]
                shape = f"length {spec.length}" if spec.length else ""
            out.append(f"| `{field}` | {carried} | {kind} | {shape} | {_cell(spec.doc)} |"
                       .replace("|  |", "| |"))
    return "\n".join(out)


EXAMPLE_CODE = '''\
import numpy as np
from protocol.codec import encode
from protocol.messages import ObsRequest

msg = ObsRequest(request_id=7, deterministic=False, task_descriptions=["pick"],
                 main_images=np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3),
                 states=np.array([[0.5, -1.0]], dtype=np.float32))
frames = encode(msg, sender="actor-0", run="demo", seq=1)'''


def _example_frames() -> list[bytes]:
    msg = ObsRequest(request_id=7, deterministic=False, task_descriptions=["pick"],
                     main_images=np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3),
                     states=np.array([[0.5, -1.0]], dtype=np.float32))
    return [bytes(f) for f in encode(msg, sender="actor-0", run="demo", seq=1)]


def _annotate(data: bytes, pos: int, depth: int, out: list) -> int:
    """One msgpack object at ``pos`` as annotated hex lines (the kinds the example uses);
    returns the position after it."""
    pad, b = "  " * depth, data[pos]

    def line(nbytes: int, what: str) -> None:
        hexes = " ".join(f"{x:02x}" for x in data[pos:pos + nbytes])
        out.append(f"{pad}{hexes:<{max(40, len(hexes) + 1)}} {what}")

    if b <= 0x7F:
        line(1, f"int {b}")
        return pos + 1
    if b in (0xC2, 0xC3):
        line(1, "true" if b == 0xC3 else "false")
        return pos + 1
    if 0xA0 <= b <= 0xBF:
        n = b & 0x1F
        line(1 + n, f'str "{data[pos + 1:pos + 1 + n].decode()}"')
        return pos + 1 + n
    if 0x80 <= b <= 0x8F or 0x90 <= b <= 0x9F:
        n, is_map = b & 0x0F, b < 0x90
        if not is_map and n and all(x <= 0x7F for x in data[pos + 1:pos + 1 + n]):
            line(1, f"array, {n} item{'s' * (n != 1)}")
            ints = data[pos + 1:pos + 1 + n]
            out.append(f"{pad}  {' '.join(f'{x:02x}' for x in ints):<40} "
                       f"int {', '.join(str(x) for x in ints)}")
            return pos + 1 + n
        line(1, f"{'map' if is_map else 'array'}, {n} "
                f"{'entr' + ('ies' if n != 1 else 'y') if is_map else 'item' + 's' * (n != 1)}")
        pos += 1
        for _ in range(2 * n if is_map else n):
            pos = _annotate(data, pos, depth + 1, out)
        return pos
    raise ValueError(f"the example uses a msgpack kind 0x{b:02x} the annotator lacks")


def example_block() -> str:
    """Section 9: the example's code, header, and every frame's bytes."""
    frames = _example_frames()
    header = msgpack.unpackb(frames[0])
    head_json = json.dumps(header, indent=2)
    # One descriptor per line, as a reader scans them.
    head_json = re.sub(r"\{\s+(\"name\"[^}]*?)\s+\}",
                       lambda m: "{" + " ".join(m.group(1).split()) + "}", head_json)
    head_json = re.sub(r"\[\s+(\d[\d,\s]*?)\s+\]",
                       lambda m: "[" + " ".join(m.group(1).split()) + "]", head_json)
    head_json = re.sub(r"\"fields\": \{\s+(.*?)\s+\}",
                       lambda m: '"fields": {' + " ".join(m.group(1).split()) + "}",
                       head_json, flags=re.S)
    head_json = re.sub(r"\[\s+(\"pick\")\s+\]", r"[\1]", head_json)
    annotated: list = []
    _annotate(frames[0], 0, 0, annotated)
    hex_all = frames[0].hex()
    hex_lines = "\n".join(hex_all[i:i + 80] for i in range(0, len(hex_all), 80))
    sizes = ", ".join(str(len(f)) for f in frames)
    return "\n".join([
        "B=1, H=W=2, S=2, no optional arrays; produced by `protocol.codec.encode` with",
        '`sender="actor-0"`, `run="demo"`, `seq=1`:', "",
        "```python", EXAMPLE_CODE + f"   # {len(frames)} frames: {sizes} bytes", "```", "",
        f"The actor's DEALER sends {len(frames)} frames; the server's ROUTER receives "
        f"{len(frames) + 1}: `[b\"actor-0\", frame 0,", "frame 1, frame 2]`.", "",
        f"Frame 0 ({len(frames[0])} bytes), decoded, as JSON:", "",
        "```json", head_json, "```", "",
        "Frame 0, byte by byte:", "", "```", *annotated, "```", "",
        f"The same {len(frames[0])} bytes as one hex string:", "",
        "```", hex_lines, "```", "",
        "(40 bytes a line; the line breaks are for the page only.)", "",
        "Frame 1, `main_images`, `uint8 [1,2,2,3]`, 12 bytes, C order (pixel (0,0) RGB, "
        "pixel (0,1)", "RGB, pixel (1,0) RGB, pixel (1,1) RGB):", "",
        "```", " ".join(f"{x:02x}" for x in frames[1]), "```", "",
        "Frame 2, `states`, `float32 [1,2]`, 8 bytes, little-endian (0.5 = `0x3f000000`, "
        "-1.0 =", "`0xbf800000`):", "",
        "```", " ".join(f"{x:02x}" for x in frames[2]), "```"])


def accepts_block() -> str:
    """The types each endpoint accepts, from ``links.wiring.ACCEPTS``."""
    from links.wiring import ACCEPTS

    rows = ["| endpoint | accepts |", "|---|---|"]
    rows += [f"| {name} | {', '.join(f'`{t.__name__}`' for t in types)} |"
             for name, types in ACCEPTS.items()]
    return "\n".join(rows)


BLOCKS = {"messages": messages_block, "example": example_block, "accepts": accepts_block}


def render(text: str) -> str:
    """``text`` with every generated block rewritten; a missing marker is an error."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {name} [^\n]*-->\n).*?(\n<!-- end: {name} -->)",
                             re.S)
        if not pattern.search(text):
            raise ValueError(f"protocol/README.md has no '<!-- generated: {name} ... -->' "
                             f"... '<!-- end: {name} -->' block")
        text = pattern.sub(lambda m: m.group(1) + make() + m.group(2), text)
    return text


def stale_blocks(text: str) -> list[str]:
    """Names of the generated blocks of ``text`` that differ from the code's."""
    fresh = render(text)
    return [name for name in BLOCKS
            if _block(text, name) != _block(fresh, name)]


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- generated: {name} [^\n]*-->\n(.*?)\n<!-- end: {name} -->", text, re.S)
    return m.group(1) if m else ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    p.add_argument("--doc", type=Path, default=DOC, help="the document (default: %(default)s)")
    args = p.parse_args(argv)
    text = args.doc.read_text()
    if args.check:
        stale = stale_blocks(text)
        for name in stale:
            print(f"{args.doc}: the generated block '{name}' is stale; run "
                  "python scripts/protocol_doc.py", file=sys.stderr)
        return 1 if stale else 0
    args.doc.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
