"""The schema-version table the runtime resolves opsets with agrees with onnx.defs."""
from __future__ import annotations

import subprocess
import sys

import onnx.defs
import pytest

from edgetrain.ops.registry import schema_version, supported_ops
from edgetrain.ops.schema_versions import MAX_OPSET, SINCE


def test_table_covers_every_default_domain_op():
    assert sorted(SINCE) == supported_ops(""), "run python tools/make_schema_versions.py"


@pytest.mark.parametrize("op", supported_ops(""))
def test_table_matches_onnx_defs(op):
    for opset in range(1, min(MAX_OPSET, onnx.defs.onnx_opset_version()) + 1):
        try:
            want = onnx.defs.get_schema(op, opset, "").since_version
        except onnx.defs.SchemaError:
            want = None
        assert schema_version(op, opset) == want, (op, opset)


def test_a_training_step_never_loads_the_onnx_schema_registry():
    # onnx.defs' first call builds every schema of every domain in memory (~6 MB resident):
    # a step resolves versions from the table instead. Spied in a fresh process.
    code = """
import numpy as np, onnx.defs
from edgetrain import InferenceSession
calls = []
real = onnx.defs.get_schema
onnx.defs.get_schema = lambda *a, **k: calls.append(a) or real(*a, **k)
from onnx import TensorProto, helper
g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Conv", ["h", "w"], ["y"])],
    "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    [helper.make_tensor(
        "w", TensorProto.FLOAT, [1, 1, 1, 1], [2.0])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
InferenceSession(m.SerializeToString()).run(None, {"x": np.ones((1, 1, 4, 4), np.float32)})
print(len(calls))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stderr
