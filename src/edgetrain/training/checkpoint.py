"""CheckpointState: parameters (with gradients and the trainable flag), typed properties and,
optionally, optimizer state — saved as one safetensors file (no pickle), written atomically.

File layout: tensors ``param/<name>`` and ``optim/<moment>/<name>``; the safetensors metadata key
``edgetrain`` holds JSON: each parameter's shape, dtype, trainable flag and CRC-32 (so a corrupted
file is refused by name, not trained on), the properties with their types, the module's training
step and the optimizer's type, step, learning rate and settings. A *nominal* checkpoint has the
names and shapes only; it cannot train until every parameter has been given its data.
"""
from __future__ import annotations

import json
import numbers
import os
import struct
import tempfile
import zlib
from typing import Any, Iterator, Mapping

import numpy as np
from safetensors.numpy import load as st_load, save as st_save

from ..errors import EdgetrainError

FORMAT = "edgetrain-checkpoint"
VERSION = 1


class CheckpointError(EdgetrainError):
    """A checkpoint that cannot be read, written or used with this model."""


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder:
    a crash at any instant leaves either the old file or the new one, never a torn one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        try:  # keep the mode of the file replaced; a new one is readable like any other (0644)
            os.fchmod(fd, os.stat(path).st_mode & 0o777)
        except FileNotFoundError:
            os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems cannot fsync a directory
        pass


class Parameter:
    """One state tensor: ``.data`` (NumPy array), ``.grad`` (None before a training step),
    ``.requires_grad``. Assigning ``.data`` copies the values in (shape and dtype checked)."""

    def __init__(self, state: "CheckpointState", name: str):
        self._state, self.name = state, name

    @property
    def data(self) -> np.ndarray:
        a = self._state._tensors.get(self.name)
        if a is None:
            raise CheckpointError(f"parameter {self.name!r} has no data: the checkpoint is "
                                  "nominal (names and shapes only); load or assign it first")
        return a

    @data.setter
    def data(self, value) -> None:
        self._state._set(self.name, value)

    @property
    def grad(self) -> np.ndarray | None:
        return self._state._grads.get(self.name)

    @property
    def requires_grad(self) -> bool:
        return self.name in self._state._trainable

    @property
    def shape(self) -> tuple[int, ...]:
        return self._state._shapes[self.name]

    @property
    def dtype(self) -> np.dtype:
        return self._state._dtypes[self.name]

    def __repr__(self) -> str:
        return (f"Parameter({self.name!r}, shape={list(self.shape)}, dtype={self.dtype}, "
                f"requires_grad={self.requires_grad})")


class Parameters(Mapping[str, Parameter]):
    def __init__(self, state: "CheckpointState"):
        self._state = state

    def __getitem__(self, name: str) -> Parameter:
        if name not in self._state._shapes:
            raise KeyError(f"no parameter {name!r} in the checkpoint")
        return Parameter(self._state, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._state._shapes)

    def __len__(self) -> int:
        return len(self._state._shapes)


class Properties(dict):
    """User properties: int, float or str values (kept with their type)."""

    def __setitem__(self, key: str, value) -> None:
        super().__setitem__(key, _check_property(key, value))

    def update(self, *args, **kw) -> None:
        for k, v in dict(*args, **kw).items():
            self[k] = v


def _check_property(key, value):
    if not isinstance(key, str):
        raise CheckpointError(f"property names are strings, not {type(key).__name__}")
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real, str)):
        raise CheckpointError(f"property {key!r}: value {value!r} of type {type(value).__name__} "
                              "is not an int, float or str")
    if isinstance(value, numbers.Integral):
        return int(value)
    return value if isinstance(value, str) else float(value)


class CheckpointState:
    """The training state of a model (ONNX Runtime's ``CheckpointState``)."""

    def __init__(self, tensors: Mapping[str, np.ndarray | None], shapes: Mapping[str, tuple],
                 dtypes: Mapping[str, np.dtype], trainable: set[str], buffers: set[str] = frozenset()):
        self._tensors: dict[str, np.ndarray | None] = dict(tensors)
        self._shapes = {k: tuple(v) for k, v in shapes.items()}
        self._dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
        self._trainable = set(trainable)
        self._buffers = set(buffers)
        self._grads: dict[str, np.ndarray] = {}
        self.properties = Properties()
        self.train_step = 0  # training steps run by a Module (drives the dropout generator)
        self.optimizer: dict[str, Any] | None = None  # type, step, lr, config, moments

    # --- building ----------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], trainable, buffers=(),
                    nominal: bool = False) -> "CheckpointState":
        return cls({k: None if nominal else np.array(v) for k, v in arrays.items()},
                   {k: v.shape for k, v in arrays.items()}, {k: v.dtype for k, v in arrays.items()},
                   set(trainable), set(buffers))

    @property
    def parameters(self) -> Parameters:
        return Parameters(self)

    @property
    def nominal(self) -> bool:
        return any(v is None for v in self._tensors.values())

    def missing(self) -> list[str]:
        return [k for k, v in self._tensors.items() if v is None]

    def _set(self, name: str, value) -> None:
        if name not in self._shapes:
            raise CheckpointError(f"no parameter {name!r} in the checkpoint")
        a = np.asarray(value)
        if a.shape != self._shapes[name] or a.dtype != self._dtypes[name]:
            raise CheckpointError(f"parameter {name!r} is {self._dtypes[name]}"
                                  f"{list(self._shapes[name])}; got {a.dtype}{list(a.shape)}")
        cur = self._tensors.get(name)
        if cur is None:
            self._tensors[name] = np.array(a)
        else:
            cur[...] = a

    # --- save / load -------------------------------------------------------------------------
    @classmethod
    def save_checkpoint(cls, state: "CheckpointState", checkpoint_uri: str | os.PathLike,
                        include_optimizer_state: bool = False) -> None:
        state.save(checkpoint_uri, include_optimizer_state)

    def save(self, path: str | os.PathLike, include_optimizer_state: bool = False) -> None:
        tensors: dict[str, np.ndarray] = {}
        params = []
        for k in self._shapes:
            a = self._tensors.get(k)
            entry = {"name": k, "shape": list(self._shapes[k]), "dtype": self._dtypes[k].str,
                     "requires_grad": k in self._trainable, "buffer": k in self._buffers}
            if a is not None:
                tensors[f"param/{k}"] = np.ascontiguousarray(a)
                entry["crc32"] = _crc(a)
            params.append(entry)
        meta: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "parameters": params,
            "properties": {k: [type(v).__name__, v] for k, v in self.properties.items()},
            "train_step": self.train_step, "optimizer": None}
        if include_optimizer_state and self.optimizer is not None:
            opt = {k: v for k, v in self.optimizer.items() if k != "moments"}
            crcs = {}
            for moment, per in self.optimizer.get("moments", {}).items():
                for k, a in per.items():
                    tensors[f"optim/{moment}/{k}"] = np.ascontiguousarray(a)
                    crcs[f"optim/{moment}/{k}"] = _crc(a)
            opt["moments"] = sorted(self.optimizer.get("moments", {}))
            opt["crc32"] = crcs
            meta["optimizer"] = opt
        try:
            data = st_save(tensors, metadata={"edgetrain": json.dumps(meta)})
            atomic_write(path, data)
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoint {os.fspath(path)!r}: {e}; the previous "
                                  "file (if any) is unchanged") from e

    @classmethod
    def load_checkpoint(cls, checkpoint_uri: str | os.PathLike) -> "CheckpointState":
        path = os.fspath(checkpoint_uri)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint {path!r}: {e}") from e
        meta = _metadata(raw, path)
        try:
            tensors = st_load(raw)
        except Exception as e:
            raise CheckpointError(f"checkpoint {path!r} is corrupted: {e}") from e
        try:
            return cls._from_meta(meta, tensors, path)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path!r} has bad metadata: {e!r}") from e

    @classmethod
    def _from_meta(cls, meta, tensors, path) -> "CheckpointState":
        shapes, dtypes, data = {}, {}, {}
        for p in meta["parameters"]:
            k = p["name"]
            shapes[k], dtypes[k] = tuple(p["shape"]), np.dtype(p["dtype"])
            a = tensors.get(f"param/{k}")
            if a is not None:
                if a.shape != shapes[k] or a.dtype != dtypes[k] or _crc(a) != p.get("crc32"):
                    raise CheckpointError(f"checkpoint {path!r} is corrupted: parameter {k!r} does "
                                          "not match its recorded shape, dtype or checksum")
            data[k] = a
        state = cls(data, shapes, dtypes,
                    {p["name"] for p in meta["parameters"] if p["requires_grad"]},
                    {p["name"] for p in meta["parameters"] if p.get("buffer")})
        for k, (typ, v) in meta["properties"].items():
            if typ not in ("int", "float", "str"):
                raise CheckpointError(f"checkpoint {path!r}: property {k!r} has type {typ!r}")
            dict.__setitem__(state.properties, k, {"int": int, "float": float, "str": str}[typ](v))
        state.train_step = int(meta.get("train_step", 0))
        opt = meta.get("optimizer")
        if opt is not None:
            moments: dict[str, dict[str, np.ndarray]] = {m: {} for m in opt["moments"]}
            for key, crc in opt["crc32"].items():
                a = tensors[key]
                if _crc(a) != crc:
                    raise CheckpointError(f"checkpoint {path!r} is corrupted: optimizer state "
                                          f"{key!r} does not match its checksum")
                _, moment, name = key.split("/", 2)
                moments[moment][name] = np.array(a)
            state.optimizer = {**{k: v for k, v in opt.items() if k not in ("moments", "crc32")},
                               "moments": moments}
        return state


def _metadata(raw: bytes, path: str) -> dict:
    """The edgetrain metadata of a safetensors file, or a CheckpointError naming the file."""
    if len(raw) < 8:
        raise CheckpointError(f"{path!r} is not a checkpoint: {len(raw)} bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise CheckpointError(f"{path!r} is not a checkpoint or is truncated (header of {n} "
                              f"bytes in a {len(raw)}-byte file)")
    try:
        header = json.loads(raw[8:8 + n])
        meta = json.loads(header["__metadata__"]["edgetrain"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path!r} is not an edgetrain checkpoint (no readable "
                              f"metadata: {e!r})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not an edgetrain checkpoint")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path!r} was written by a newer edgetrain (format version "
                              f"{meta['version']}; this one reads {VERSION})")
    return meta
