"""Reverse-mode autodiff: the backward pass as graph nodes."""
from .backward import NON_DIFFERENTIABLE, Backward, GradBuilder, GradientError, build_backward

__all__ = ["Backward", "GradBuilder", "GradientError", "NON_DIFFERENTIABLE", "build_backward"]
