"""The official ONNX backend node tests, as shipped in the onnx package, selected for edgetrain.

Recent onnx wheels ship the node tests as code (``collect_testcases``) rather than data files, so
onnx's ``BackendTest`` finds none. We run the same cases the same way: prepare the case's model with
our backend, run each data set, and compare with onnx's own ``Runner.assert_similar_outputs`` using
the case's rtol/atol.

A case is *selected* when every node of its graph is a default-domain op edgetrain registers.
A selected case may be skipped only through ``EXCLUDED`` in node_exclusions.py, with its reason.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from edgetrain.backend import EdgetrainBackend
from edgetrain.ops import supported_ops


@functools.lru_cache(maxsize=None)
def all_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return tuple(c for c in collect_testcases() if c.kind == "node")


def case_ops(case) -> set[tuple[str, str]]:
    return {("" if n.domain == "ai.onnx" else n.domain, n.op_type) for n in case.model.graph.node}


def selected_cases(ops: set[str] | None = None):
    supported = set(supported_ops(""))
    out = []
    for c in all_cases():
        kinds = case_ops(c)
        if all(d == "" and op in supported for d, op in kinds):
            if ops is None or any(op in ops for _, op in kinds):
                out.append(c)
    return out


def run_case(case) -> None:
    """Raises on a mismatch or an error, exactly like onnx's runner would."""
    from onnx.backend.test.runner import Runner, _normalize_tensor

    rep = EdgetrainBackend.prepare(case.model, "CPU")
    for inputs, ref_outputs in case.data_sets:
        ins = [_normalize_tensor(x) for x in inputs]
        refs = [_normalize_tensor(x) for x in ref_outputs]
        outs = rep.run(ins)
        Runner.assert_similar_outputs(refs, outs, rtol=case.rtol, atol=case.atol,
                                      model_dir=case.name)
