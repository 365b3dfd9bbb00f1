"""Module: runs training and eval steps of the artifacts on a CheckpointState
(ONNX Runtime's ``onnxruntime.training.api.Module``, same names and semantics)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..graph.ir import Graph, Value
from ..graph.load import load_graph
from ..graph.infer import infer
from ..runtime.prefix import ChunkedPrefix, split_frozen_prefix
from ..runtime.session import InferenceSession, check_feeds, signature_of
from .checkpoint import CheckpointError, CheckpointState, atomic_write
from .fused import UpdateHook, fused_graph
from .microbatch import MicroBatcher
from .graphs import META_KEY, ArtifactError, Roles


def _load_roles(model, what: str) -> tuple[Graph, Roles]:
    graph = model if isinstance(model, Graph) else load_graph(model)
    text = graph.doc.get(META_KEY)
    if text is None:
        where = model if isinstance(model, (str, os.PathLike)) else "the given model"
        raise ArtifactError(f"{where!s} is not an edgetrain {what} model (no {META_KEY!r} metadata); "
                            "make one with edgetrain.artifacts.generate_artifacts")
    return graph, Roles.from_json(text)


class Module:
    """Train and eval steps. ``module(*inputs)`` runs one step in the current mode (``train()`` by
    default) with the inputs in ``input_names()`` order (user inputs, then labels) and returns the
    loss (or the list of outputs when the model has additional outputs).

    Gradients accumulate across training steps until ``lazy_reset_grad()``: the next step then
    overwrites them instead of adding. A failed step changes nothing.

    Memory knobs (keyword-only; the defaults are what you want unless you are measuring):

    * ``planned=True``: each input signature runs in one arena laid out ahead of time from the
      execution order of the step; nothing of tensor size is allocated while it runs.
    * ``inplace=True``: elementwise ops, activations and BatchNorm write over an input that dies
      there. Costs nothing; saves a buffer per such op.
    * ``recompute=True``: cheap activations (BatchNorm in inference form, Clip/Relu, Add...)
      are computed again in backward instead of kept from forward: about one more pass over
      memory per such op, and about half the activation memory of a Conv-BN-ReLU network.
      ``recompute=K`` (an integer) also keeps only every K-th expensive activation (Conv,
      MatMul...) and recomputes the others from the one kept before them when backward reaches
      their segment (segment checkpointing): MobileNetV2-96 all layers, K=2: 79.3 -> 56.9 MiB
      of arena for ~15% more time; not always smaller (the LM's peak is elsewhere).
    * ``chunk_frozen=True``: when the first layers are frozen and treat samples independently
      (a backbone under a trainable head), their forward runs a few samples at a time, in an
      arena of about ``chunk_budget_mb`` (default 4 MiB); the rest of the step reads their
      features from one full-batch buffer. A little more Python overhead per step.
    * ``micro_batch=K``: a batch of more than K samples runs as micro-batches of K whose
      gradients add up to the batch's; the step's arena is planned for K samples. Exact up to
      float rounding (the parts' gradients are summed in another order), and only allowed when
      the forward pass treats samples independently and the loss splits (checked; else an error
      says what mixes the samples).
    * ``memory_budget_mb``: the most the step may plan (arena, parameters, gradients,
      optimizer state, inputs, 8 MiB of kernel scratch; the interpreter and libraries come on
      top). A step over it first swaps activations to storage between forward and backward (a
      background thread moves them ``swap_lookahead`` steps ahead of need, to a hidden file in
      ``swap_dir``, default the temp directory), then recomputes segments, then both (all
      bit-identical), then runs in the largest micro-batches that fit (plain, or with segments
      and swap); when nothing fits, the step is refused before anything runs, with the least it
      needs. Decided once per batch shape, from plans alone.
    All settings but the micro-batches give bit-identical results. ``memory_plan()`` reports
    the plan.
    """

    def __init__(self, train_model_uri, state: CheckpointState, eval_model_uri=None,
                 device: str = "cpu", *, planned: bool = True, inplace: bool = True,
                 recompute: bool = True, chunk_frozen: bool = True,
                 chunk_budget_mb: float = 4.0, micro_batch: int | None = None,
                 memory_budget_mb: float | None = None, swap_dir: str | None = None,
                 swap_lookahead: int = 4):
        if device != "cpu":
            raise ValueError(f"device {device!r}: edgetrain runs on the CPU ('cpu')")
        if not isinstance(state, CheckpointState):
            raise TypeError(f"state must be a CheckpointState, not {type(state).__name__}")
        self._train_graph, self._roles = _load_roles(train_model_uri, "training")
        self._eval_graph, self._eval_roles = None, None
        if eval_model_uri is not None:
            self._eval_graph, self._eval_roles = _load_roles(eval_model_uri, "eval")
            if self._eval_roles.params != self._roles.params:
                raise ArtifactError("the eval model's parameters differ from the training "
                                    "model's: they come from different artifacts")
        self._state = state
        self._check_state()
        fixed = set(self._roles.params) | set(self._roles.buffers) | set(self._roles.labels)
        if self._roles.rng_step:
            fixed.add(self._roles.rng_step)
        knobs = dict(planned=planned, inplace=inplace, recompute=recompute)
        self._train_session = InferenceSession(self._train_graph, dynamic=fixed, **knobs)
        self._eval_session = (InferenceSession(self._eval_graph, dynamic=fixed, **knobs)
                              if self._eval_graph is not None else None)
        self._reset_pending = True
        self.training = True
        self._knobs, self._fixed = knobs, fixed
        self._chunk_budget = int(chunk_budget_mb * 2 ** 20)
        self._prefix: ChunkedPrefix | None | bool = None if chunk_frozen and planned else False
        self._rest_session: InferenceSession | None = None
        self._fused: dict[tuple[int, int], InferenceSession] = {}  # see _fused_session
        self._plan_hook = UpdateHook()  # memory_plan(fused=True) plans, never runs, with it
        self._micro = MicroBatcher(self, micro_batch, memory_budget_mb, swap_dir, swap_lookahead)

    # --- state ---------------------------------------------------------------------------------
    def _check_state(self) -> None:
        declared = {v.name: v for v in self._train_graph.inputs}
        names = self._roles.params + self._roles.buffers
        for k in names:
            if k not in self._state._shapes:
                raise CheckpointError(f"the checkpoint has no parameter {k!r} that the training "
                                      "model needs: it belongs to another model")
            v, shape, dtype = declared[k], self._state._shapes[k], self._state._dtypes[k]
            if tuple(v.shape) != shape or np.dtype(v.dtype) != dtype:
                raise CheckpointError(f"parameter {k!r} is {dtype}{list(shape)} in the checkpoint "
                                      f"but {v.describe()} {v.dtype} in the training model: the "
                                      "checkpoint belongs to another model")
        extra = [k for k in self._state._shapes if k not in set(names)]
        if extra:
            raise CheckpointError(f"the checkpoint has parameters the training model does not use "
                                  f"({', '.join(extra[:3])}): it belongs to another model")
        trainable = set(self._roles.trainable)
        if self._state._trainable != trainable:
            diff = sorted(self._state._trainable ^ trainable)
            raise CheckpointError(f"the checkpoint and the training model disagree on which "
                                  f"parameters train ({', '.join(diff[:3])}): different artifacts")

    def _state_feeds(self) -> dict[str, np.ndarray]:
        missing = self._state.missing()
        if missing:
            raise CheckpointError(f"the checkpoint is nominal: {len(missing)} parameter(s) have no "
                                  f"data (e.g. {missing[0]!r}); load them with "
                                  "copy_buffer_to_parameters or by assigning parameters[...].data")
        return {k: self._state._tensors[k] for k in self._roles.params + self._roles.buffers}

    # --- steps ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        self.training = bool(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def input_names(self) -> list[str]:
        if self.training or self._eval_graph is None:
            return list(self._roles.inputs)
        return list(self._eval_roles.inputs)

    def output_names(self) -> list[str]:
        return list(self._roles.outputs)

    def _feeds(self, inputs: Sequence, kw: dict) -> dict[str, np.ndarray]:
        names = self.input_names()
        if len(inputs) > len(names):
            raise InputError(f"{len(inputs)} inputs given; the model takes {len(names)}: "
                             f"{', '.join(names)}")
        feeds = dict(zip(names, inputs))
        for k, v in kw.items():
            if k not in names:
                raise InputError(f"unknown input {k!r}; the model's inputs are {', '.join(names)}")
            if k in feeds:
                raise InputError(f"input {k!r} given twice")
            feeds[k] = v
        missing = [k for k in names if k not in feeds]
        if missing:
            raise InputError(f"missing input(s) {', '.join(map(repr, missing))}; the model's "
                             f"inputs are, in order: {', '.join(names)}")
        return feeds

    def __call__(self, *inputs, **named):
        feeds = self._feeds(inputs, named)
        feeds.update(self._state_feeds())
        if not self.training:
            if self._eval_session is None:
                raise ArtifactError("eval() needs the eval model: Module(train, state, eval_model)")
            outs = self._eval_session.run(self._roles.outputs, feeds)
            return outs[0] if len(outs) == 1 else outs
        return self._train_step(feeds)

    def _train_step(self, feeds: dict[str, np.ndarray], hook: UpdateHook | None = None):
        """A training step; with ``hook``, the fused step (each parameter handed to the hook as
        soon as its gradient is final, no gradient kept), else gradients stored or added."""
        r = self._roles
        if r.rng_step:
            feeds[r.rng_step] = np.asarray(self._state.train_step, dtype=np.int64)
        size = self._micro.size_for(feeds)
        if size:
            return self._micro.step(feeds, size, hook)
        grads = [] if hook else [r.gradients[p] for p in r.trainable]
        updates = list(r.buffer_updates.items())
        session = self._session_for(feeds, hook)
        outs = session.run(r.outputs + grads + [u for _, u in updates], feeds)
        n = len(r.outputs)
        # commit only after the whole step succeeded
        for p, g in zip(r.trainable, outs[n:n + len(grads)]):
            if self._reset_pending or p not in self._state._grads:
                self._state._grads[p] = np.array(g)
            else:
                self._state._grads[p] += g
        if hook:
            self._state._grads.clear()  # applied: nothing left for optimizer.step()
        self._reset_pending = bool(hook)
        for (b, _), new in zip(updates, outs[n + len(grads):]):
            self._state._tensors[b][...] = new
        self._state.train_step += 1
        return outs[0] if n == 1 else outs[:n]

    def _set_planning(self, swap=None, segments: int | None = None) -> None:
        """For the steps planned from now on: swap settings (plan.swap.SwapSettings or None),
        and segment checkpointing (keep every ``segments``-th expensive activation; None: the
        ``recompute`` option)."""
        for s in (self._train_session, self._rest_session, *self._fused.values()):
            if s is not None:
                s.swap = swap
                s.recompute = segments or self._knobs["recompute"]

    def _set_swap(self, settings) -> None:
        self._set_planning(settings, None)

    def _session_for(self, feeds: dict[str, np.ndarray], hook: UpdateHook | None = None
                     ) -> InferenceSession:
        """The session a training step on ``feeds`` runs: after the frozen prefix (run here, its
        features added to ``feeds``) when there is one, fused when given a hook."""
        session = self._train_session
        if self._prefix is None:
            self._split_prefix(feeds)
        if self._prefix:
            feeds.update(self._prefix.run(feeds))
            session = self._rest_session
        return self._fused_session(session, hook) if hook else session

    def _fused_session(self, base: InferenceSession, hook: UpdateHook) -> InferenceSession:
        """The fused variant of the session ``base`` (built once per base session and hook)."""
        key = (id(base), id(hook))
        if key not in self._fused:
            r = self._roles
            graph = fused_graph(base.graph, {p: r.gradients[p] for p in r.trainable}, hook)
            self._fused[key] = InferenceSession(graph, dynamic=base._dynamic, **self._knobs)
            self._fused[key].swap, self._fused[key].recompute = base.swap, base.recompute
        return self._fused[key]

    def memory_plan(self, *inputs, fused: bool = True, **named):
        """The memory plan (:class:`edgetrain.plan.Plan`) of a step on inputs like these, in the
        current mode: arena, lower bound, largest tensors; ``.report()`` prints it. ``fused``:
        the step of ``optimizer.train_step`` (parameters updated as soon as their gradients are
        final; what the Trainer runs), else that of ``module(...)`` (gradients kept)."""
        feeds = self._feeds(inputs, named)
        feeds.update(self._state_feeds())
        r, training = self._roles, self.training or self._eval_session is None
        if training and r.rng_step:
            feeds[r.rng_step] = np.asarray(self._state.train_step, dtype=np.int64)
        session = self._train_session if training else self._eval_session
        prefix_bytes = {}
        if training and self._prefix is None:
            self._split_prefix(feeds)
        if training and self._prefix:  # the frozen prefix runs in chunks; plan the rest
            chunk_plan, k = self._prefix.chunk_plan(feeds)
            prefix_bytes = {f"frozen prefix arena ({k} of {len(feeds[r.inputs[0]])} samples "
                            "at a time)": chunk_plan.placement.arena}

            batch = len(feeds[r.inputs[0]])
            for y in self._prefix.split.frontier:  # the features, as the rest reads them
                t = chunk_plan.inferred.types[y]
                feeds[y] = np.zeros((batch,) + t.shape[1:], t.dtype)
            session = self._rest_session
        fused = fused and training
        if fused:
            session = self._fused_session(session, self._plan_hook)
        feeds = check_feeds(session.graph, feeds)
        plan = session.memory_plan(feeds)
        nbytes = {k: int(np.asarray(self._state._tensors[k]).nbytes) for k in r.params + r.buffers}
        state = {"parameters": sum(nbytes[k] for k in r.params),
                 "buffers (BatchNorm statistics)": sum(nbytes[k] for k in r.buffers)}
        if training and not fused:
            state["gradients (kept for the optimizer)"] = sum(nbytes[k] for k in r.trainable)
        if training:
            moments = (self._state.optimizer or {}).get("moments", {})
            state["optimizer state"] = int(sum(np.asarray(v).nbytes for per in moments.values()
                                               for v in per.values()))
        state["inputs"] = int(sum(v.nbytes for k, v in feeds.items() if k not in nbytes))
        plan.external_bytes = {**prefix_bytes, **state,
                               "constants": plan.external_bytes.get("constants", 0)}
        return plan

    def _split_prefix(self, feeds: dict[str, np.ndarray]) -> None:
        """Decide, on the first batch of more than one sample, whether a frozen prefix runs in
        chunks (``chunk_frozen``)."""
        r = self._roles
        batch_inputs = [k for k in r.inputs if k not in set(r.labels)]
        sizes = {np.shape(feeds[k])[0] for k in batch_inputs if np.ndim(feeds[k])}
        if len(sizes) != 1 or sizes.pop() < 2:
            return  # decide on a later, larger batch
        graph = self._train_graph
        types = infer(graph, signature_of(check_feeds(graph, feeds), set())).types
        variables = set(r.trainable) | set(r.labels) | ({r.rng_step} if r.rng_step else set())
        split = split_frozen_prefix(graph, types, batch_inputs, variables)
        if split is None:
            self._prefix = False
            return
        knobs = self._knobs
        self._prefix = ChunkedPrefix(split, lambda g: InferenceSession(g, **knobs),
                                     self._chunk_budget)
        self._rest_session = InferenceSession(split.rest, dynamic=self._fixed | set(split.frontier),
                                              **knobs)

    def lazy_reset_grad(self) -> None:
        """The next training step overwrites the gradients instead of adding to them."""
        self._reset_pending = True

    # --- parameters as one buffer (federated learning) ------------------------------------------
    def _names(self, trainable_only: bool) -> list[str]:
        return list(self._roles.trainable if trainable_only
                    else self._roles.params + self._roles.buffers)

    def get_parameters_size(self, trainable_only: bool = True) -> int:
        return int(sum(np.prod(self._state._shapes[k], dtype=np.int64)
                       for k in self._names(trainable_only)))

    def get_contiguous_parameters(self, trainable_only: bool = False) -> np.ndarray:
        """Parameters (then, unless ``trainable_only``, frozen ones and buffers) flattened into
        one float32 vector, in the training model's order."""
        self._state_feeds()
        parts = [self._state._tensors[k].reshape(-1) for k in self._names(trainable_only)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def copy_buffer_to_parameters(self, buffer, trainable_only: bool = True) -> None:
        """The inverse of ``get_contiguous_parameters``: checked in full before anything changes."""
        buf = np.asarray(buffer).reshape(-1)
        names = self._names(trainable_only)
        want = self.get_parameters_size(trainable_only)
        if buf.size != want:
            raise InputError(f"buffer has {buf.size} elements; the "
                             f"{'trainable ' if trainable_only else ''}parameters have {want}")
        at = 0
        for k in names:
            shape, dtype = self._state._shapes[k], self._state._dtypes[k]
            n = int(np.prod(shape, dtype=np.int64))
            self._state._set(k, buf[at:at + n].reshape(shape).astype(dtype))
            at += n

    # --- export --------------------------------------------------------------------------------
    def export_model_for_inferencing(self, inference_model_uri="inference_model.onnx",
                                     graph_output_names: Sequence[str] | None = None) -> None:
        """Write an inference model: the eval graph cut to ``graph_output_names`` (default: the
        original model's outputs), current parameters as initializers, no loss or label inputs."""
        if self._eval_graph is None:
            raise ArtifactError("export needs the eval model: Module(train, state, eval_model)")
        outputs = list(graph_output_names or self._roles.model_outputs)
        graph = export_graph(self._eval_graph, outputs, self._state_feeds())
        labels = [v.name for v in graph.inputs if v.name in set(self._roles.labels)]
        if labels:
            raise ArtifactError(f"outputs {outputs} depend on the label input(s) {labels}: "
                                "export model outputs, not the loss")
        atomic_write(inference_model_uri, graph.to_onnx().SerializeToString())


def export_graph(graph: Graph, outputs: Sequence[str], state: dict[str, np.ndarray]) -> Graph:
    """``graph`` pruned to what ``outputs`` need, with ``state`` inputs as initializers."""
    produced = {o: n for n in graph.nodes for o in n.outputs if o}
    known = {v.name for v in graph.inputs} | set(graph.initializers) | set(produced)
    for o in outputs:
        if o not in known:
            raise ArtifactError(f"{o!r} is not a value of the model")
    need, keep = set(outputs), []
    for n in reversed(graph.nodes):
        if any(o in need for o in n.outputs if o):
            keep.append(n)
            need.update(x for x in n.inputs if x)
    keep.reverse()
    types = {v.name: v for v in graph.inputs + graph.outputs}
    inits = {k: v for k, v in graph.initializers.items() if k in need}
    inits.update({k: np.array(v) for k, v in state.items() if k in need})
    inputs = [v for v in graph.inputs if v.name in need and v.name not in state]
    outs = [types.get(o, Value(o, None, None)) for o in outputs]
    doc = {k: v for k, v in graph.doc.items() if k != META_KEY}
    return Graph(keep, inputs, outs, inits, dict(graph.opsets), graph.name, set(), doc)
