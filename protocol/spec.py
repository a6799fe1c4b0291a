"""Field declarations for wire messages: what each field carries, its dtype and shape.

A message dataclass declares every field with :func:`array` or :func:`scalar`; the codec
reads these declarations to encode, decode and validate, so the dataclass *is* the
schema. Shapes use symbolic dimensions (``"B"``, ``"T"``...) that must agree across the
arrays (and string lists) of one message; integers are fixed sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Union

import numpy as np

Dim = Union[int, str]

# The only dtypes that may travel; all little-endian (numpy's native order on x86/ARM).
WIRE_DTYPES = ("uint8", "bool", "int32", "int64", "float32")


@dataclass(frozen=True)
class ArraySpec:
    """An ndarray field: sent as its own raw frame, described in the header."""

    dtype: str
    shape: tuple[Dim, ...]
    doc: str
    optional: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in WIRE_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} cannot travel; use one of {WIRE_DTYPES}")


@dataclass(frozen=True)
class ScalarSpec:
    """A header field: an int, float, bool, str or list of str, carried in msgpack."""

    kind: type
    doc: str
    length: str = ""  # for list[str]: the symbolic dimension its length must equal


def array(dtype: str, shape: tuple[Dim, ...], doc: str, optional: bool = False):
    """Declare an array field; optional ones are ``None`` when absent."""
    spec = ArraySpec(dtype, tuple(shape), doc, optional)
    if optional:
        return dataclasses.field(default=None, metadata={"wire": spec})
    return dataclasses.field(metadata={"wire": spec})


def scalar(kind: type, doc: str, length: str = ""):
    """Declare a header field of type ``kind`` (int, float, bool, str or list)."""
    return dataclasses.field(metadata={"wire": ScalarSpec(kind, doc, length)})


def wire_fields(cls) -> list[tuple[str, Union[ArraySpec, ScalarSpec]]]:
    """The (name, spec) pairs of a message class, in declaration order."""
    return [(f.name, f.metadata["wire"]) for f in dataclasses.fields(cls)]


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a wire dtype name, in little-endian byte order."""
    return np.dtype(name).newbyteorder("<") if name not in ("uint8", "bool") else np.dtype(name)
