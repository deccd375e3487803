"""A run's training state between two epochs, as plain bytes: what lets a run pause for a classmate's turn and go on
in another thread, process or machine, computing exactly what it would have computed without the pause.

The bytes are a length-prefixed JSON header and then raw tensor bytes, like the stored weights: decoding them runs
no code (nothing is unpickled), so a checkpoint can cross to a Ray worker or come back from disk safely.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import torch

from drill.run_record import Epoch

FORMAT = 1  # bumped whenever what a checkpoint holds changes; an older one is refused, never misread
_DTYPES = {
    name: getattr(torch, name) for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8")
}


class CheckpointError(ValueError):
    """Bytes that are not a checkpoint this version can read."""


@dataclass
class Checkpoint:
    """Everything a run needs to go on after its last finished epoch."""

    epochs: tuple[Epoch, ...]  # the finished epochs' metrics, as the run reported them
    seconds: float  # training time so far
    state: dict = field(default_factory=dict)  # model, optimizer, schedule and random generator states
    config: dict = field(default_factory=dict)  # the run's config: a checkpoint goes on only the run it came from

    def to_bytes(self) -> bytes:
        """This checkpoint as bytes."""
        tensors: list[torch.Tensor] = []
        epochs = [epoch.to_dict() for epoch in self.epochs]
        whole = {"format": FORMAT, "epochs": epochs, "seconds": self.seconds, "state": self.state}
        tree = _encode(whole | {"config": self.config}, tensors)
        header = {"tree": tree, "tensors": []}
        chunks = []
        for tensor in tensors:
            tensor = tensor.detach().cpu().contiguous()
            header["tensors"].append([str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
            chunks.append(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        head = json.dumps(header).encode()
        return struct.pack("<I", len(head)) + head + b"".join(chunks)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Checkpoint:
        """The inverse of to_bytes; raises ValueError on anything else (cut short, another format, not one)."""
        try:
            (length,) = struct.unpack_from("<I", blob)
            if 4 + length > len(blob):
                raise CheckpointError("the checkpoint is cut short")
            header = json.loads(blob[4 : 4 + length])
            offset, tensors = 4 + length, []
            for dtype_name, shape in header["tensors"]:
                dtype = _DTYPES[dtype_name]
                size = math.prod(shape) * dtype.itemsize
                if offset + size > len(blob):
                    raise CheckpointError("the checkpoint is cut short")
                raw = torch.frombuffer(bytearray(blob[offset : offset + size]), dtype=torch.uint8) if size else None
                tensors.append(raw.view(dtype).reshape(shape) if raw is not None else torch.empty(shape, dtype=dtype))
                offset += size
            tree = _decode(header["tree"], tensors)
            if tree.get("format") != FORMAT:
                raise CheckpointError(
                    f"a checkpoint of format {tree.get('format')!r}; this version reads format {FORMAT}"
                )
            epochs = tuple(
                Epoch.from_dict(epoch, f"epochs[{position}]", _refuse) for position, epoch in enumerate(tree["epochs"])
            )
            return cls(epochs=epochs, seconds=tree["seconds"], state=tree["state"], config=tree["config"])
        except CheckpointError:
            raise
        # json's decoding errors are ValueErrors; the others come from a header of the wrong shape or sizes.
        except (struct.error, KeyError, TypeError, IndexError, AttributeError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"not a checkpoint ({type(error).__name__}: {error})") from error


def _refuse(field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"the checkpoint's {field}: {problem}")


# JSON has no tuples, no non-string keys and no tensors, and optimizer states need all three (parameter indices as
# keys, betas as tuples): each container is tagged so it comes back as it went in.
def _encode(value, tensors: list[torch.Tensor]):
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return {"t": len(tensors) - 1}
    if isinstance(value, dict):
        return {"d": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"u": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return {"l": [_encode(v, tensors) for v in value]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _decode(value, tensors: list[torch.Tensor]):
    if not isinstance(value, dict):
        return value
    ((tag, body),) = value.items()
    if tag == "t":
        return tensors[body]
    if tag == "d":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    if tag == "u":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "l":
        return [_decode(v, tensors) for v in body]
    raise ValueError(f"unknown tag {tag!r}")
