"""Selected ONNX node tests that edgetrain does not pass, each with its reason.

This is the only way a node test of a supported op may be skipped. Keys are case names.
"""
_BF16 = ("bfloat16 arithmetic: NumPy has no native bfloat16, and edgetrain refuses it outside Cast "
         "(UnsupportedDtypeError) rather than compute it slowly through emulation")
_NOT_TENSOR = ("graph input/output is a {} rather than a tensor; edgetrain supports tensor inputs "
               "and outputs only (ModelLoadError)")

EXCLUDED: dict[str, str] = {
    "test_einsum_batch_matmul_bfloat16": _BF16,
    "test_einsum_sum_bfloat16": _BF16,
    "test_einsum_transpose_bfloat16": _BF16,
    "test_range_bfloat16_type_positive_delta": _BF16,
    "test_identity_sequence": _NOT_TENSOR.format("sequence"),
    "test_identity_opt": _NOT_TENSOR.format("optional"),
}
