"""Selected ONNX node tests that edgetrain does not pass, each with its reason.

This is the only way a node test of a supported op may be skipped. Keys are case names.
"""
EXCLUDED: dict[str, str] = {
}
