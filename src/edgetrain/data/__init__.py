"""The data that ships with edgetrain, for the demo, the quick start and the examples.

* ``MODEL``: path of the digit classifier (``digits_classifier.onnx``, trained by edgetrain with
  ``tools/make_demo_model.py``), input ``[N, 1, 8, 8]`` float32, output ``logits`` ``[N, 10]``.
* ``load_digits()``: the UCI handwritten digits (see README.md here for the credit), images
  ``[1797, 1, 8, 8]`` in [0, 1] and int64 labels.
* ``split(n)``: the demo's fixed split (the model's training, its validation, and the held-back
  digits a "user" writes).
* ``user_style(images)``: one simulated user's handwriting (slanted and bold).
"""
from ..cli.demo import MODEL, load_digits, split, user_style

__all__ = ["MODEL", "load_digits", "split", "user_style"]
