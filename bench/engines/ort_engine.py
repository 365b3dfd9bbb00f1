"""ONNX Runtime on-device training 1.19.2 (runs in bench/.venv-ort, which has no edgetrain):
artifacts from ``onnxruntime.training.artifacts.generate_artifacts``, then ``Module`` /
``Optimizer`` with AdamW (ORT's own, the Hugging Face variant) and cross-entropy.

Sequence logits [N,T,C]: ORT's ``LossType.CrossEntropyLoss`` hands them to
SoftmaxCrossEntropyLoss, which takes classes on axis 1, so labels [N,T] do not fit. A custom loss
block (Transpose to [N,C,T], then SoftmaxCrossEntropyLoss; the same mean over N*T positions) is
used instead, which is how an ORT user would have to write it."""
from __future__ import annotations

import os
import time

from ..measure import StepTimer, numpy_blas

ENGINE = "ort"


def _sequence_loss():
    import onnx
    from onnxruntime.training import onnxblock

    class SequenceCrossEntropy(onnxblock.Block):
        """logits [N,T,C] -> Transpose [N,C,T] -> SoftmaxCrossEntropyLoss(labels [N,T]), mean."""

        def build(self, logits: str):
            g = self.base.graph
            out = next(o for o in g.output if o.name == logits)
            dims = out.type.tensor_type.shape.dim
            g.input.append(onnx.helper.make_tensor_value_info(
                "labels", onnx.TensorProto.INT64, [d.dim_param or d.dim_value for d in dims[:-1]]))
            g.node.append(onnx.helper.make_node("Transpose", [logits], [logits + "_nct"],
                                                perm=[0, 2, 1], name="bench_seq_transpose"))
            g.node.append(onnx.helper.make_node(
                "SoftmaxCrossEntropyLoss", [logits + "_nct", "labels"], ["loss", "log_prob"],
                reduction="mean", name="bench_seq_ce"))
            return "loss"

    return SequenceCrossEntropy()


def _explain(e: RuntimeError, model) -> RuntimeError:
    """ORT's gradient builder fails with an internal assertion when a node it differentiates
    lacks an output its rule reads: name the node when it is the one-output LayerNormalization
    (its rule reads the saved mean and inverse std, outputs 1 and 2)."""
    ln = [n.name for n in model.graph.node if n.op_type == "LayerNormalization"
          and len(n.output) == 1]
    if "GradientBuilderBase::O" in str(e) and ln:
        return RuntimeError(f"no gradient for LayerNormalization with one output ({len(ln)} "
                            f"nodes, e.g. {ln[0]!r}): ORT's rule reads outputs 1-2 (mean, inverse "
                            f"std); ORT says: {str(e).strip().splitlines()[0]}")
    return e


def _quiet():
    import onnxruntime
    onnxruntime.set_default_logger_severity(3)


def patch_layernorm(model) -> int:
    """Give every one-output LayerNormalization its optional outputs (mean, inverse std), which
    ORT's gradient rule reads; the function computed is unchanged. Returns how many."""
    n = 0
    for i, node in enumerate(model.graph.node):
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"bench_ln{i}_mean", f"bench_ln{i}_inv_std"])
            n += 1
    return n


def prepare(model_path: str, trainable: list[str], artifact_dir: str,
            patch_ln: bool = False) -> dict:
    """ORT's artifacts; ``patch_ln``: first give LayerNormalization nodes their optional outputs
    (the ``ort-ln3`` variant, a workaround an ORT user would need for torch's exports)."""
    import onnx
    from onnxruntime.training import artifacts

    _quiet()
    t0 = time.perf_counter()
    model = onnx.load(model_path)
    patched = patch_layernorm(model) if patch_ln else 0
    rank = len(model.graph.output[0].type.tensor_type.shape.dim)
    loss = _sequence_loss() if rank == 3 else artifacts.LossType.CrossEntropyLoss
    os.makedirs(artifact_dir, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(artifact_dir)  # onnxblock writes temporary files into the working directory
    try:
        artifacts.generate_artifacts(model, requires_grad=trainable, loss=loss,
                                     optimizer=artifacts.OptimType.AdamW,
                                     artifact_directory=artifact_dir)
    except RuntimeError as e:
        raise _explain(e, model) from e
    finally:
        os.chdir(cwd)
    out = {"artifacts_s": round(time.perf_counter() - t0, 2),
           "loss": "custom block (Transpose + SoftmaxCrossEntropyLoss)" if rank == 3
           else "LossType.CrossEntropyLoss"}
    if patched:
        out["note"] = (f"workaround: the export's {patched} LayerNormalization nodes given their "
                       "optional mean/inv-std outputs (same function) so that ORT has a gradient")
    bn = _batchnorm_modes(os.path.join(artifact_dir, "training_model.onnx"))
    if bn.get(1):
        out["note"] = (f"BatchNorm on batch statistics: ORT's training model runs {bn[1]} of the "
                       f"export's {sum(bn.values())} inference BatchNormalization nodes as "
                       "BatchNormInternal with training_mode=1 (frozen layers included), "
                       "a different computation")
    return out


def _batchnorm_modes(path: str) -> dict[int, int]:
    """{training_mode: count} of the (internal) BatchNorm nodes of a training model."""
    import onnx

    modes: dict[int, int] = {}
    for n in onnx.load(path).graph.node:
        if n.op_type in ("BatchNormalization", "BatchNormInternal"):
            mode = next((a.i for a in n.attribute if a.name == "training_mode"), 0)
            modes[mode] = modes.get(mode, 0) + 1
    return modes


def run_job(artifact_dir: str, batches, steps: int, *, warmup: int = 1, lr: float = 1e-3,
            threads: int = 2) -> dict:
    result: dict = {"engine": ENGINE}
    t0 = time.perf_counter()
    import onnxruntime
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
    result["import_s"] = round(time.perf_counter() - t0, 3)
    _quiet()

    t0 = time.perf_counter()
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    art = lambda name: os.path.join(artifact_dir, name)  # noqa: E731
    state = CheckpointState.load_checkpoint(art("checkpoint"))
    module = Module(art("training_model.onnx"), state, art("eval_model.onnx"), device="cpu",
                    session_options=so)
    optimizer = Optimizer(art("optimizer_model.onnx"), module)
    optimizer.set_learning_rate(lr)
    module.train()
    result["load_s"] = round(time.perf_counter() - t0, 3)
    x, y = batches

    def step(i: int):
        loss = module(x[i % len(x)], y[i % len(y)])
        optimizer.step()
        module.lazy_reset_grad()
        return loss

    result.update(StepTimer(warmup, steps).run(step))
    result["versions"] = {"onnxruntime-training": onnxruntime.__version__}
    result["threads"] = {"ort_intra_op_threads": threads, "ort_inter_op_threads": 1,
                         **numpy_blas()}
    return result
