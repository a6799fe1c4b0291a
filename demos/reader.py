"""Reading demonstrations: chunkrl's recordings and LIBERO's released HDF5 files alike.

:func:`read_demos` takes files or folders (searched recursively for ``*.hdf5``/``*.h5``)
and returns every demo with a report. A file that cannot be read (truncated, corrupt,
missing a dataset) is named in the report with the reason, and the rest are read; so is a
temporary file a crashed writer left behind.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import h5py
import numpy as np

from demos.layout import Demo, instruction_from_filename, policy_states, read_demo
from demos.writer import TMP_SUFFIX

log = logging.getLogger(__name__)
SUFFIXES = (".hdf5", ".h5")


@dataclass
class ReadReport:
    """What :func:`read_demos` found: files read, demos, and each bad file with why."""

    files: int = 0
    demos: int = 0
    bad: list = field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        """One line: demos and files read, and the first five unreadable files with why."""
        text = f"{self.demos} demos from {self.files} files"
        if self.bad:
            text += f"; {len(self.bad)} unreadable: " + "; ".join(
                f"{p} ({why})" for p, why in self.bad[:5])
        return text


def find_files(paths: Iterable[str | Path], report: ReadReport) -> list[Path]:
    """Every HDF5 file under ``paths``, sorted; leftover temporary files go to ``report``."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.name.endswith(TMP_SUFFIX) and f.name.startswith("."):
                    report.bad.append((str(f), "incomplete: its writer stopped while writing"))
                elif f.suffix in SUFFIXES and not f.name.startswith("."):
                    files.append(f)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"dataset {str(p)!r} does not exist; give HDF5 files or "
                                    "folders of them (a record run's dataset folder)")
    return files


def _instruction(data, path: Path) -> str:
    info = data.attrs.get("problem_info")
    if info is not None:
        try:
            return json.loads(info)["language_instruction"]
        except (ValueError, KeyError, TypeError):
            pass
    return instruction_from_filename(path)


def _demo_names(data) -> list[str]:
    names = [n for n in data if re.fullmatch(r"demo_\d+", n)]
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N,H,W,3] -> [N,size,size,3] (bilinear; area-like when shrinking)."""
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR,
                                                          reducing_gap=2.0))
                     for f in images])


def read_file(path: Path, orientation: str, cameras: tuple[str, ...],
              image_size: Optional[int] = None) -> list[Demo]:
    """Every demo of one file; raises OSError/KeyError/ValueError when it is unreadable."""
    demos = []
    with h5py.File(path, "r") as f:
        data = f["data"]
        instruction = _instruction(data, path)
        for name in _demo_names(data):
            demo = read_demo(data[name], instruction, orientation, cameras)
            if image_size:
                demo.main_images = resize_images(demo.main_images, image_size)
                if demo.final_main_image is not None:
                    demo.final_main_image = resize_images(demo.final_main_image[None],
                                                          image_size)[0]
                if demo.wrist_images is not None:
                    demo.wrist_images = resize_images(demo.wrist_images, image_size)
                demo.views = {c: resize_images(v, image_size) for c, v in demo.views.items()}
                demo.final_views = {c: resize_images(v[None], image_size)[0]
                                    for c, v in demo.final_views.items()}
            demos.append(demo)
    return demos


def _read_each(paths: Iterable[str | Path], read) -> tuple[list, ReadReport]:
    """``read(path)``'s demos of every file under ``paths``, and the report (a file that
    raises OSError, KeyError or ValueError is named in it with why, and skipped)."""
    report = ReadReport()
    out: list = []
    for path in find_files(paths, report):
        try:
            got = read(path)
        except (OSError, KeyError, ValueError) as err:
            report.bad.append((str(path), f"{type(err).__name__}: {err}".splitlines()[0]))
            continue
        report.files += 1
        report.demos += len(got)
        out.extend(got)
    return out, report


def read_demos(paths: Iterable[str | Path], orientation: str = "upright",
               cameras: tuple[str, ...] = ("main",),
               image_size: Optional[int] = None) -> tuple[list[Demo], ReadReport]:
    """Every demo under ``paths`` (images in ``orientation``, resized to ``image_size``
    when given), and the report; unreadable files are logged with their path."""
    demos, report = _read_each(paths, lambda path: read_file(path, orientation, cameras,
                                                             image_size))
    for path, why in report.bad:
        log.warning("dataset file %s skipped: %s", path, why)
    return demos, report


POLICY_STATES = "policy_states"  # read_low_dim's key for the policy's state vector


def read_low_dim(paths: Iterable[str | Path], keys: tuple[str, ...] = ("actions", "states",
                                                                          "success")
                 ) -> tuple[list[dict], ReadReport]:
    """The per-step arrays ``keys`` (``data/demo_N/<key>``; :data:`POLICY_STATES`: the
    policy's state vector, :func:`demos.layout.policy_states`) of every demo under
    ``paths``, without reading a frame: one dict per demo. A file whose demos lack a key is
    named in the report (a recording made before simulator states were kept has no
    ``states``)."""
    def one(group, key: str) -> np.ndarray:
        return policy_states(group["obs"]) if key == POLICY_STATES else group[key][()]

    def read(path: Path) -> list[dict]:
        with h5py.File(path, "r") as f:
            return [{k: one(f["data"][name], k) for k in keys} for name in _demo_names(f["data"])]

    return _read_each(paths, read)
