"""Demonstrations: LIBERO's HDF5 layout (:mod:`demos.layout`), the atomic per-episode
writer (:mod:`demos.writer`), the reader of chunkrl's and LIBERO's files
(:mod:`demos.reader`) and the action statistics (:mod:`demos.stats`)."""

from demos.layout import Demo
from demos.reader import ReadReport, read_demos
from demos.writer import DemoWriter

__all__ = ["Demo", "DemoWriter", "ReadReport", "read_demos"]
