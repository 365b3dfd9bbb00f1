"""Steps that write one of their inputs in place (``OpDef.mutates``: an optimizer update of a
parameter) run as early as they safely can: right after the last step that reads that input or
a view of it, and after the steps that make their other inputs. The update of a parameter then
happens as soon as its gradient is final and nothing reads the old value any more, so the
gradient's buffer dies there instead of living to the end of the step."""
from __future__ import annotations

from typing import Sequence

from ..graph.infer import Step
from .lifetimes import VIEW_OPS


def _aliases(steps: Sequence[Step], name: str) -> set[str]:
    """``name`` and the values that may be views of it (view ops applied to it, transitively)."""
    out = {name}
    for s in steps:
        if s.node.op_type in VIEW_OPS and s.node.inputs and s.node.inputs[0] in out:
            out.update(y for y in s.node.outputs if y)
    return out


def settle(steps: Sequence[Step]) -> list[Step]:
    """``steps`` with each mutating step moved to the earliest safe place (order otherwise kept)."""
    mutating = [s for s in steps if s.opdef.mutates is not None]
    if not mutating:
        return list(steps)
    rest = [s for s in steps if s.opdef.mutates is None]
    made = {y: i for i, s in enumerate(rest) for y in s.node.outputs if y}
    after: dict[int, list[Step]] = {}
    for m in mutating:
        target = _aliases(rest, m.node.inputs[m.opdef.mutates])
        anchor = max([i for i, s in enumerate(rest) if target & set(s.node.inputs)]
                     + [made[x] for x in m.node.inputs if x in made] + [-1])
        after.setdefault(anchor, []).append(m)
    out = list(after.get(-1, []))
    for i, s in enumerate(rest):
        out.append(s)
        out.extend(after.get(i, []))
    return out
