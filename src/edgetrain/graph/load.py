"""Load an ONNX model into the IR: from a path, bytes or a ModelProto.

External data is read only from files inside the model's folder: a location that leaves it
(``../x``, an absolute path, a symbolic link pointing outside) is refused.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import ModelLoadError
from .ir import Graph, Node, Value, attrs_from_onnx

ModelLike = Union[str, os.PathLike, bytes, onnx.ModelProto]


def read_model(model: ModelLike, base_dir: str | os.PathLike | None = None
               ) -> tuple[onnx.ModelProto, Path | None]:
    """The ModelProto and the folder its external data lives in (None if it has no folder)."""
    if isinstance(model, onnx.ModelProto):
        return model, Path(base_dir) if base_dir is not None else None
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, where, folder = bytes(model), "the given bytes", base_dir
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"model file {str(path)!r} does not exist or is not a file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"cannot read model file {str(path)!r}: {e.strerror}") from e
        where, folder = f"file {str(path)!r}", base_dir if base_dir is not None else path.parent
    else:
        raise ModelLoadError(f"cannot load a model from a {type(model).__name__}: give a path, "
                             "bytes or an onnx.ModelProto")
    if not data:
        raise ModelLoadError(f"{where} is empty: not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as e:
        raise ModelLoadError(f"{where} is not a valid ONNX model (malformed or truncated "
                             f"protobuf: {e})") from e
    if not proto.HasField("graph"):
        raise ModelLoadError(f"{where} holds no graph: not an ONNX model, or truncated")
    return proto, Path(folder) if folder is not None else None


def _external_bytes(t: onnx.TensorProto, folder: Path | None) -> bytes:
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location")
    if not location:
        raise ModelLoadError(f"initializer {t.name!r} is stored externally but names no location")
    if folder is None:
        raise ModelLoadError(f"initializer {t.name!r} is stored in external file {location!r} but "
                             "the model was given without a folder: load it from its path, or "
                             "pass base_dir")
    root = folder.resolve()
    target = (root / location).resolve()
    if os.path.isabs(location) or (target != root and root not in target.parents):
        raise ModelLoadError(f"initializer {t.name!r}: external data location {location!r} is "
                             f"outside the model's folder {str(root)!r}; refused")
    if not target.is_file():
        raise ModelLoadError(f"initializer {t.name!r}: external data file {str(target)!r} is missing")
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else None
    with open(target, "rb") as f:
        f.seek(offset)
        data = f.read() if length is None else f.read(length)
    if length is not None and len(data) != length:
        raise ModelLoadError(f"initializer {t.name!r}: external data file {str(target)!r} is "
                             f"truncated ({len(data)} of {length} bytes at offset {offset})")
    return data


def tensor_to_array(t: onnx.TensorProto, folder: Path | None) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raw = _external_bytes(t, folder)
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        del copy.external_data[:]
        copy.data_location = onnx.TensorProto.DEFAULT
        copy.raw_data = raw
        t = copy
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:  # numpy_helper raises plain errors on bad sizes and dtypes
        raise ModelLoadError(f"initializer {t.name!r} cannot be read: {e}") from e
    expected = tuple(int(d) for d in t.dims)
    if arr.shape != expected:
        raise ModelLoadError(f"initializer {t.name!r} has {arr.size} elements, its dims "
                             f"{list(expected)} need {int(np.prod(expected))} (truncated file?)")
    return arr


def _value(vi: onnx.ValueInfoProto) -> Value:
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is None:
        raise ModelLoadError(f"graph input/output {vi.name!r} is not a tensor; only tensors are "
                             "supported")
    dtype = None
    if tt.elem_type:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dtype = None
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in tt.shape.dim)
    return Value(vi.name, dtype, shape)


def load_graph(model: ModelLike, base_dir: str | os.PathLike | None = None) -> Graph:
    """Load an ONNX model as a :class:`Graph` (checks that every value used is defined)."""
    proto, folder = read_model(model, base_dir)
    g = proto.graph
    opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version)
              for o in proto.opset_import}
    if not proto.opset_import:
        opsets[""] = 1  # IR < 3 models carry no opset import
    inits = {t.name: tensor_to_array(t, folder) for t in g.initializer}
    for st in g.sparse_initializer:
        raise ModelLoadError(f"sparse initializer {st.values.name!r} is not supported")
    declared = [_value(v) for v in g.input]
    inputs = [v for v in declared if v.name not in inits]
    overridable = {v.name for v in declared if v.name in inits}
    nodes = []
    defined = set(inits) | {v.name for v in inputs}
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        for x in n.input:
            if x and x not in defined:
                raise ModelLoadError(f"node {name!r} ({n.op_type}) reads {x!r}, which no input, "
                                     "initializer or earlier node defines (graph not sorted, or "
                                     "the file is truncated)")
        try:
            attrs = attrs_from_onnx(n)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        nodes.append(Node(n.op_type, list(n.input), list(n.output), attrs, name, n.domain))
        defined.update(o for o in n.output if o)
    outputs = [_value(v) for v in g.output]
    for v in outputs:
        if v.name not in defined:
            raise ModelLoadError(f"graph output {v.name!r} is not produced by any node "
                                 "(truncated file?)")
    if not outputs:
        raise ModelLoadError("the model declares no outputs")
    doc = {p.key: p.value for p in proto.metadata_props}
    return Graph(nodes, inputs, outputs, inits, opsets, g.name or "graph", overridable, doc)
