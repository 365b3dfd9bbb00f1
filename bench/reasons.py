"""Turn an engine's exception into a short reason in words for the results table."""
from __future__ import annotations

import re

# (pattern in the message, reason): known failures first, in words
KNOWN = [
    (r"LayerNormalization.*(gradient|Grad)|(gradient|Grad).*LayerNormalization",
     "no gradient for LayerNormalization (the one-output form torch exports at opset 17)"),
    (r"HardSwish.*(gradient|Grad)", "no gradient for HardSwish"),
    (r"SoftmaxCrossEntropyLoss", "cross-entropy does not fit the logits/labels shapes"),
    (r"ir_version|IR version", "the model's IR version is too new for this runtime"),
]


def short_reason(e: BaseException, limit: int = 220) -> str:
    msg = str(e).strip() or type(e).__name__
    for pattern, reason in KNOWN:
        if re.search(pattern, msg, flags=re.S):
            return reason
    return f"{type(e).__name__}: {_first_line(msg, limit)}"


def _first_line(msg: str, limit: int) -> str:
    msg = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    line = next((ln.strip() for ln in msg.splitlines() if ln.strip()), msg)
    return line if len(line) <= limit else line[: limit - 1] + "…"
