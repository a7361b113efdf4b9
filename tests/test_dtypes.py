import numpy as np
import pytest

from fmha_bench import dtypes


@pytest.mark.parametrize("name,maximum", [("fp8_e4m3fn", 448.0), ("fp8_e4m3fnuz", 240.0)])
def test_fp8_round_trip_is_exact_on_every_finite_code(name, maximum):
    dt = dtypes.get(name)
    codes = np.arange(256, dtype=np.uint8)
    values = dtypes.decode(codes, dt)
    finite = np.isfinite(values)
    again = dtypes.encode(values[finite], dt)
    assert np.array_equal(dtypes.decode(again, dt), values[finite])
    assert np.nanmax(values) == maximum


def test_fp8_saturates_and_rounds_to_nearest_even():
    dt = dtypes.E4M3FN
    assert dtypes.decode(dtypes.encode(np.array([1000.0, -1000.0]), dt), dt).tolist() == [448.0, -448.0]
    # 1.0625 lies halfway between 1.0 (code 0x38, even) and 1.125 (0x39): ties go to the even code
    assert dtypes.encode(np.array([1.0625]), dt)[0] == 0x38


def test_fnuz_has_a_single_nan_code_and_no_negative_zero():
    dt = dtypes.E4M3FNUZ
    values = dtypes.decode(np.arange(256, dtype=np.uint8), dt)
    assert np.isnan(values).sum() == 1 and np.isnan(values[0x80])
    assert dtypes.encode(np.array([-0.0]), dt)[0] == 0


def test_bf16_round_to_nearest_even_and_nan():
    x = np.array([1.0, 1.00390625, 1.01171875, np.nan], dtype=np.float32)  # 1 + 2^-8 ties to 1.0
    y = dtypes.decode(dtypes.encode(x, dtypes.BF16), dtypes.BF16)
    assert y[0] == 1.0 and y[1] == 1.0 and y[2] == 1.015625 and np.isnan(y[3])


@pytest.mark.parametrize("name", sorted({dtypes.output_dtype(d).name for d in dtypes.DTYPES.values()}))
def test_poison_is_nan_in_every_output_dtype(name):
    dt = dtypes.get(name)
    assert np.isnan(dtypes.decode(dtypes.poison((3,), dt), dt)).all()
    all_ff = np.full(3 * dt.itemsize, 0xFF, dtype=np.uint8).view(dt.storage)
    assert np.isnan(dtypes.decode(all_ff, dt)).all()  # the runner's 0xFF memset poisons too
