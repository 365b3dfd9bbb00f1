"""edgetrain as an ``onnx.backend.base.Backend``, so onnx's own backend tests can run it."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .runtime import InferenceSession


class EdgetrainRep(BackendRep):
    def __init__(self, session: InferenceSession):
        self.session = session

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        graph_inputs = [v.name for v in self.session.graph.inputs]
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feeds = dict(zip(graph_inputs, inputs))
        return tuple(self.session.run(None, feeds))


class EdgetrainBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> EdgetrainRep:
        super().prepare(model, device, **kwargs)
        return EdgetrainRep(InferenceSession(model, check=kwargs.get("check", True)))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple] | None = None, **kwargs: Any):
        raise NotImplementedError("edgetrain runs whole models; use run_model")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")


prepare = EdgetrainBackend.prepare
run_model = EdgetrainBackend.run_model
supports_device = EdgetrainBackend.supports_device
