"""Safetensors reading without loading whole files: header parsing and positioned reads.

Contract: `ModelFiles(dir)` indexes a Hugging Face model directory (sharded safetensors with
`model.safetensors.index.json`, or one `model.safetensors`) by reading only the JSON headers.
`read_rows(name, start, stop)` returns a CPU tensor of rows [start, stop) of a tensor read with
`os.preadv` into a fresh buffer: no mmap, so resident memory is only what the caller holds, and
the read releases the GIL (so reader threads overlap with compute). `.bin` checkpoints are not
read here: they are pickles; convert them first (`merge.st_io.convert_bin` uses
`torch.load(weights_only=True)`, the safe loader).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge.errors import ConfigError, IncompatibleError

if TYPE_CHECKING:
    import numpy as np
    import torch

# safetensors dtype code -> (torch dtype name, bytes per element)
ST_DTYPES: dict[str, tuple[str, int]] = {
    "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2), "F64": ("float64", 8),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
TORCH_TO_ST = {v[0]: k for k, v in ST_DTYPES.items()}
# numpy dtype names of the raw bytes (numpy has no bfloat16: its bits are read as uint16)
NP_DTYPES = {code: "uint16" if code == "BF16" else name for code, (name, _) in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def row_elems(self) -> int:
        """Elements per leading-axis row (the whole tensor for 0-d/1-d tensors)."""
        if len(self.shape) <= 1:
            return self.numel
        return self.numel // self.shape[0]

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def itemsize(self) -> int:
        return ST_DTYPES[self.dtype][1]


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header dict, data start offset) of one safetensors file."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ConfigError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ConfigError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(fh.read(n))
    return header, 8 + n


class ModelFiles:
    """Tensor index of one model directory, built from headers only."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.tensors: dict[str, TensorInfo] = {}
        self.files: list[Path] = []
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()), key=lambda f: (len(f), f))
            self.files = [directory / f for f in names]
        elif (directory / "model.safetensors").exists():
            self.files = [directory / "model.safetensors"]
        else:
            st = sorted(directory.glob("*.safetensors"))
            if st:
                self.files = st
            elif list(directory.glob("*.bin")):
                raise IncompatibleError(
                    f"{directory}: only PyTorch .bin weights found; this tool reads safetensors",
                    override=f"convert first: python -m merge.st_io {directory} (loads with "
                             f"torch.load(weights_only=True) and writes model.safetensors)")
            else:
                raise ConfigError(f"{directory}: no safetensors weights (model.safetensors or an index)")
        for f in self.files:
            if not f.exists():
                raise ConfigError(f"{directory}: the index names {f.name}, which is missing")
            header, start = read_header(f)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                a, b = meta["data_offsets"]
                self.tensors[name] = TensorInfo(name, f, meta["dtype"], tuple(meta["shape"]), start + a, b - a)

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return fd

    def advise(self, info: TensorInfo) -> None:
        """Ask the kernel to start reading a tensor's bytes in the background (read-ahead)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd(info.file), info.offset, info.nbytes, os.POSIX_FADV_WILLNEED)

    def read_rows_np(self, info: TensorInfo, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of `info` as a flat numpy array of its dtype (BF16 as uint16 bits),
        read into `out` (a uint8 array of exactly that many bytes) when given."""
        import numpy as np

        per_row = info.row_elems * info.itemsize
        nbytes = (stop - start) * per_row
        buf = np.empty(nbytes, dtype=np.uint8) if out is None else out
        if buf.size != nbytes:
            raise ValueError(f"read_rows_np: out has {buf.size} bytes, {nbytes} needed")
        view = memoryview(buf)  # type: ignore[arg-type]
        fd = self._fd(info.file)
        got = 0
        off = info.offset + start * per_row
        while got < nbytes:
            n = os.preadv(fd, [view[got:]], off + got)
            if n <= 0:
                raise ConfigError(f"{info.file}: truncated while reading {info.name}")
            got += n
        return buf.view(NP_DTYPES[info.dtype])

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of `info` as a flat tensor of its own dtype."""
        import torch

        raw = torch.from_numpy(self.read_rows_np(info, start, stop).view("uint8"))
        return raw.view(getattr(torch, ST_DTYPES[info.dtype][0]))

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        return self.read_rows(info, 0, info.rows).reshape(info.shape)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def convert_bin(directory: Path) -> None:
    """Convert pytorch_model*.bin to model.safetensors with the safe loader (weights_only=True)."""
    import torch
    from safetensors.torch import save_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.bin")):
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})


if __name__ == "__main__":  # pragma: no cover - tiny conversion entry point
    import sys

    convert_bin(Path(sys.argv[1]))
