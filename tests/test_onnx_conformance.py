"""The ONNX backend conformance tests (onnx 1.22.0's node-test data) through accelgen.

Scope: every node, PyTorch-converted and PyTorch-operator test whose model uses only ops accelgen
supports (`supported_ops()`). Each in-scope test either

* passes through `onnx.backend.test.BackendTest` with the accelgen backend (frontend + float
  reference), integer outputs compared exactly, or
* is outside the accelerator's envelope by design (listed in `BY_DESIGN` with the reason) and must
  then be refused with a one-line `AccelgenError` — never a crash or a wrong answer.

A test in scope that is neither is a failure, so a regression cannot hide as a skip.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import numpy_helper
from onnx.backend.test.loader import load_model_tests

from accelgen.errors import AccelgenError
from accelgen.frontend import supported_ops
from tests.accelgen_backend import AccelgenBackend

KINDS = ("node", "pytorch-converted", "pytorch-operator")

# In-scope tests accelgen refuses on purpose: exact test names (without "test_"), by reason.
BY_DESIGN: dict[str, str] = {
    "1-D and 3-D convolution and pooling (accelgen is 2-D only)": """
        AvgPool3d AvgPool3d_stride AvgPool3d_stride1_pad0_gpu_input Conv1d Conv1d_dilated
        Conv1d_groups Conv1d_pad1 Conv1d_pad1size1 Conv1d_pad2 Conv1d_pad2size1 Conv1d_stride
        Conv3d Conv3d_dilated Conv3d_dilated_strided Conv3d_groups Conv3d_no_bias Conv3d_stride
        Conv3d_stride_padding MaxPool1d MaxPool1d_stride MaxPool1d_stride_padding_dilation
        MaxPool3d MaxPool3d_stride MaxPool3d_stride_padding averagepool_1d_default
        averagepool_3d_default averagepool_3d_dilations_small maxpool_1d_default
        maxpool_3d_default maxpool_3d_dilations maxpool_3d_dilations_use_ref_impl
        maxpool_3d_dilations_use_ref_impl_large operator_maxpool
        averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False
        averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True
        averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False
        averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True""",
    "integer arithmetic on data (the IR computes on real values; integer models come as "
    "QDQ/QONNX) or 64-bit unsigned inputs": """
        add_int16 add_int8 add_uint16 add_uint32 add_uint64 add_uint8 sub_int16 sub_int8
        sub_uint16 sub_uint32 sub_uint64 sub_uint8 mul_int16 mul_int8 mul_uint16 mul_uint32
        mul_uint64 mul_uint8 div_int16 div_int32_trunc div_int8 div_uint16 div_uint32 div_uint64
        div_uint8 clip_default_int8_inbounds clip_default_int8_max clip_default_int8_min
        operator_non_float_params""",
    "ops across the batch axis (accelgen runs one image at a time)": """
        concat_1d_axis_0 concat_1d_axis_negative_1 concat_2d_axis_0 concat_2d_axis_negative_2
        concat_3d_axis_0 concat_3d_axis_negative_3 flatten_axis0 flatten_axis2 flatten_axis3
        flatten_negative_axis1 flatten_negative_axis2 flatten_negative_axis4
        reshape_allowzero_reordered reshape_extended_dims reshape_negative_dim
        reshape_negative_extended_dims reshape_one_dim reshape_reduced_dims
        reshape_reordered_all_dims reshape_reordered_last_dims reshape_zero_and_negative_dim
        reshape_zero_dim transpose_all_permutations_2 transpose_all_permutations_3
        transpose_all_permutations_4 transpose_all_permutations_5 transpose_default squeeze
        unsqueeze_axis_0 softmax_axis_0 quantizelinear_int2 quantizelinear_int4
        quantizelinear_uint2 quantizelinear_uint4 gemm_all_attributes gemm_transposeA
        gemm_default_matrix_bias""",
    "softmax or mean over axes other than the channels / the two spatial axes": """
        softmax_axis_1 softmax_axis_2 softmax_default_axis softmax_functional_dim3
        softmax_negative_axis reduce_mean_default_axes_keepdims_example
        reduce_mean_default_axes_keepdims_random reduce_mean_do_not_keepdims_example
        reduce_mean_do_not_keepdims_random reduce_mean_keepdims_example
        reduce_mean_keepdims_random reduce_mean_negative_axes_keepdims_example
        reduce_mean_negative_axes_keepdims_random operator_reduced_mean
        operator_reduced_mean_keepdim""",
    "arithmetic between two run-time tensors other than a residual add, or with a per-sample "
    "constant": """
        add_bcast operator_add_broadcast operator_add_size1_broadcast
        operator_add_size1_right_broadcast operator_add_size1_singleton_broadcast sub
        sub_example mul mul_example div div_example operator_addmm""",
    "batched or 1-D matrix products (dense layers are (N, K) x (K, M))": """
        matmul_1d_1d matmul_1d_3d matmul_3d matmul_4d matmul_4d_1d matmul_bcast""",
    "reflect/edge/wrap padding": """
        ReflectionPad2d ReplicationPad2d edge_pad reflect_pad wrap_pad operator_pad""",
    "training-mode ops, dropout masks and run-time ratios": """
        batchnorm_epsilon_training_mode batchnorm_example_training_mode dropout_default_mask
        dropout_default_mask_ratio dropout_default_ratio training_dropout
        training_dropout_default training_dropout_default_mask training_dropout_mask
        training_dropout_zero_ratio training_dropout_zero_ratio_mask""",
    "float8/float4 and blocked quantization": """
        dequantizelinear_blocked dequantizelinear_e4m3fn dequantizelinear_e4m3fn_float16
        dequantizelinear_e4m3fn_zero_point dequantizelinear_e5m2 dequantizelinear_float4e2m1
        quantizelinear_blocked_asymmetric quantizelinear_blocked_symmetric quantizelinear_e4m3fn
        quantizelinear_e5m2 quantizelinear_float4e2m1""",
    "other refusals: MaxPool indices, Clip with min > max, optional/sequence types, input "
    "values beyond float32 (uninitialised test data)": """
        maxpool_with_argmax_2d_precomputed_pads maxpool_with_argmax_2d_precomputed_strides
        clip_min_greater_than_max identity_opt identity_sequence operator_addconstant""",
}
_REASON = {f"test_{n}": reason for reason, names in BY_DESIGN.items() for n in names.split()}


def _in_scope() -> dict[str, onnx.backend.test.loader.TestCase]:
    supported = set(supported_ops()) | {"Constant"}
    tests = {}
    for kind in KINDS:
        for t in load_model_tests(kind=kind):
            try:
                model = onnx.load(os.path.join(t.model_dir, "model.onnx"))
            except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError):
                continue
            ops = {n.op_type for n in model.graph.node}
            # tests of pure shape/constant arithmetic have no run-time data to accelerate
            if not ops or not ops <= supported or ops <= {"Constant", "Shape", "Cast"}:
                continue
            tests[t.name] = t
    return tests


IN_SCOPE = _in_scope()


def _by_design(name: str) -> str | None:
    return _REASON.get(name)


EXPECTED_PASS = sorted(n for n in IN_SCOPE if _by_design(n) is None)
REFUSED = sorted(n for n in IN_SCOPE if _by_design(n) is not None)


class ExactIntegerBackendTest(onnx.backend.test.BackendTest):
    """BackendTest comparing integer outputs with ==, not within a tolerance."""

    @classmethod
    def assert_similar_outputs(cls, ref_outputs, outputs, rtol, atol, model_dir=None):
        for ref, out in zip(ref_outputs, outputs, strict=True):
            if isinstance(ref, np.ndarray) and ref.dtype.kind in "iub":
                np.testing.assert_array_equal(out.shape, ref.shape)
                assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
                np.testing.assert_array_equal(out, ref)
        super().assert_similar_outputs(ref_outputs, outputs, rtol, atol, model_dir=model_dir)


_backend_test = ExactIntegerBackendTest(AccelgenBackend, __name__)
for _name in EXPECTED_PASS:
    _backend_test.include(rf"^{re.escape(_name)}_cpu$")
_wanted = {f"{n}_cpu" for n in EXPECTED_PASS}
for _items in _backend_test._test_items.values():
    for _name in [n for n in _items if n not in _wanted]:
        del _items[_name]  # keep the report free of thousands of out-of-scope skips
globals().update(_backend_test.test_cases)


def test_scope_is_meaningful() -> None:
    """The conformance set covers the CNN ops, including grouped and depthwise convs."""
    assert len(EXPECTED_PASS) >= 137, len(EXPECTED_PASS)
    assert set(_REASON) <= set(IN_SCOPE), sorted(set(_REASON) - set(IN_SCOPE))
    for must in ("test_Conv2d_groups", "test_Conv2d_depthwise", "test_Conv2d_depthwise_padded",
                 "test_Conv2d_depthwise_strided", "test_Conv2d_depthwise_with_multiplier",
                 "test_conv_with_strides_and_asymmetric_padding", "test_maxpool_2d_ceil",
                 "test_averagepool_2d_pads_count_include_pad", "test_batchnorm_example",
                 "test_quantizelinear", "test_dequantizelinear_axis", "test_gemm_transposeB"):
        assert must in EXPECTED_PASS, must


def _load_inputs(model_dir: str) -> list[np.ndarray]:
    data = sorted(glob.glob(os.path.join(model_dir, "test_data_set_0", "input_*.pb")),
                  key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))
    return [numpy_helper.to_array(onnx.load_tensor(p)) for p in data]


@pytest.mark.parametrize("name", REFUSED)
def test_refused_cleanly(name: str) -> None:
    """Out-of-envelope cases end in one clear AccelgenError, not a crash or a wrong result."""
    t = IN_SCOPE[name]
    model = onnx.load(os.path.join(t.model_dir, "model.onnx"))
    try:
        inputs = _load_inputs(t.model_dir)
    except ValueError:
        inputs = []
    with pytest.raises(AccelgenError) as info:
        AccelgenBackend.prepare(model).run(inputs)
    message = str(info.value)
    assert "\n" not in message and len(message) > 20
