import math

import numpy as np
import pytest

from fmha_bench.problem import Problem
from fmha_bench.validate import compare, tolerance_for


def test_nan_never_passes():
    c = compare(np.array([1.0, np.nan]), np.array([1.0, 2.0]), 1e-3, 1e-3)
    assert c.mismatches == 1 and c.nan_count == 1 and math.isinf(c.max_abs)


def test_matching_infinities_pass_and_mismatched_ones_fail():
    ok = compare(np.array([-np.inf, 1.0]), np.array([-np.inf, 1.0]), 1e-4, 0)
    bad = compare(np.array([-np.inf, 1.0]), np.array([0.5, 1.0]), 1e-4, 0)
    assert ok.passed and not bad.passed


def test_relative_part_of_the_tolerance_scales_with_the_reference():
    c = compare(np.array([100.5, 0.5]), np.array([100.0, 0.0]), 0.1, 0.01)
    assert c.mismatches == 1  # 0.5 <= 0.1 + 1.0 passes; 0.5 > 0.1 fails


@pytest.mark.parametrize("dtype,p_precision,expect_rtol", [("fp16", "input", 2 ** -10), ("bf16", "input", 2 ** -7),
                                                            ("fp8_e4m3fn", "fp32", 2 ** -7)])
def test_tolerance_follows_dtype_epsilon(dtype, p_precision, expect_rtol):
    p = Problem(dtype=dtype, seqlen_q=1024)
    tol = tolerance_for(p, v_abs_max=4.0, p_precision=p_precision)
    assert tol.rtol == expect_rtol
    assert tol.atol < 4.0 * (2 ** -4 if dtype.startswith("fp8") else 2 ** -6)


def test_fp8_tensor_core_logit_error_widens_lse_and_o_tolerance_with_the_qk_norms():
    p = Problem(dtype="fp8_e4m3fn", hdim_q=128, seqlen_q=512)
    plain, wide = tolerance_for(p, 4.0, "input"), tolerance_for(p, 4.0, "input", qk_norm_product=128.0)
    logit_error = 128 ** -0.5 * 2.0 ** -12 * 128.0
    assert plain.lse_atol == 1e-4 and wide.lse_atol == pytest.approx(1e-4 + logit_error)
    assert wide.atol == pytest.approx(plain.atol + 4.0 * 2 * logit_error)
    assert tolerance_for(p, 4.0, "fp32", qk_norm_product=128.0).lse_atol == 1e-4   # exact-product kernels
    assert tolerance_for(Problem(dtype="fp16"), 4.0, "input", qk_norm_product=128.0).lse_atol == 1e-4


def test_fp32_p_gets_a_tighter_bound_than_rounded_p():
    p = Problem(dtype="fp16", seqlen_q=4096)
    assert tolerance_for(p, 4.0, "fp32").atol < tolerance_for(p, 4.0, "input").atol / 10


def test_largest_row_norm_skips_rows_of_unused_nan_cache_slots():
    from fmha_bench.point_runner import _largest_row_norm
    rows = np.array([[3.0, 4.0], [np.nan, np.nan], [1.0, 1.0]], np.float32)
    assert _largest_row_norm(rows) == pytest.approx(5.0)
    assert _largest_row_norm(np.full((2, 2), np.nan, np.float32)) == 0.0
