"""Running a model: the session and, later, the compiled training step."""
from .session import InferenceSession

__all__ = ["InferenceSession"]
