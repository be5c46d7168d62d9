"""Bad input: the right exception, naming the argument, raised before anything is written."""

import numpy as np
import pytest

from bn_helpers import KERNEL_NAMES, all_of, call, copy_params, fast_and_reference, word

SHAPE = (4, 3, 2)  # C = 3 on axis 1


def readonly(array):
    array = array.copy()
    array.setflags(write=False)
    return array


def base_params(name, dtype=np.float32):
    """A valid call of kernel `name`, with every optional buffer and `out` given."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(dtype)
    vector = {k: v.astype(dtype) for k, v in dict(
        weight=rng.uniform(0.5, 2, 3), bias=rng.standard_normal(3),
        running_mean=rng.standard_normal(3), running_var=rng.uniform(0.5, 2, 3)).items()}
    out = np.full(SHAPE, -7.0, dtype)
    if name == "batch_norm_train":
        return dict(x=x, **vector, axis=1, eps=1e-5, momentum=0.1, out=out)
    if name == "batch_norm_eval":
        return dict(x=x, **vector, axis=1, eps=1e-5, out=out)
    return dict(dy=rng.standard_normal(SHAPE).astype(dtype), x=x, mean=np.zeros(3, dtype),
                invstd=np.ones(3, dtype), weight=vector["weight"], axis=1, out=out)


def case(name, changes, exception, match, case_id):
    return pytest.param(name, changes, exception, match, id=f"{name.removeprefix('batch_norm_')}-{case_id}")


BAD_DTYPES = {
    "int64": np.int64, "int32": np.int32, "uint8": np.uint8, "bool": np.bool_, "float16": np.float16,
    "complex128": np.complex128, "complex64": np.complex64, "object": np.object_, "str": np.str_,
}


def array_of(dtype, shape=SHAPE):
    return np.full(shape, "1" if dtype is np.str_ else 1, dtype=dtype)


CASES = []
for name in KERNEL_NAMES:
    # Dtypes that are not float32/float64, and things that are not arrays at all.
    for dtype_id, bad in BAD_DTYPES.items():
        pattern = all_of(word("x"), dtype_id) if dtype_id != "str" else word("x")
        CASES.append(case(name, {"x": array_of(bad)}, TypeError, pattern, f"x-{dtype_id}"))
    for thing_id, thing in {"None": None, "object": object(), "string": "abc", "dict": {"a": 1},
                            "int-list": [[1, 2], [3, 4]]}.items():
        if name == "batch_norm_train" or thing is not None:
            CASES.append(case(name, {"x": thing}, TypeError, word("x"), f"x-{thing_id}"))
    # Shapes.
    CASES.append(case(name, {"x": np.ones(5, np.float32)}, ValueError, all_of(word("x"), "dim"), "x-ndim1"))
    CASES.append(case(name, {"x": np.float32(1.0)}, ValueError, all_of(word("x"), "dim"), "x-ndim0"))
    for axis in (3, -4, 100):
        CASES.append(case(name, {"axis": axis}, ValueError, all_of(word("axis"), "bounds"), f"axis{axis}"))
    vectors = {"batch_norm_train": ("weight", "bias", "running_mean", "running_var"),
               "batch_norm_eval": ("running_mean", "running_var", "weight", "bias"),
               "batch_norm_backward": ("mean", "invstd", "weight")}[name]
    for arg in vectors:
        for shape_id, shape in {"4": (4,), "2": (2,), "3x1": (3, 1), "scalar": ()}.items():
            CASES.append(case(name, {arg: np.ones(shape, np.float32)}, ValueError,
                              all_of(word(arg), "shape"), f"{arg}-shape{shape_id}"))
    CASES.append(case(name, {"out": np.ones((4, 3, 3), np.float32)}, ValueError,
                      all_of(word("out"), "shape"), "out-shape"))
    CASES.append(case(name, {"out": readonly(np.ones(SHAPE, np.float32))}, ValueError,
                      all_of(word("out"), "read-only"), "out-readonly"))
    CASES.append(case(name, {"out": np.ones(SHAPE, np.float64)}, (TypeError, ValueError), word("out"),
                      "out-dtype"))
    CASES.append(case(name, {"weight": np.ones(3, np.complex64)}, TypeError, word("weight"), "weight-complex"))
    CASES.append(case(name, {"weight": object()}, TypeError, word("weight"), "weight-object"))

for name in ("batch_norm_train", "batch_norm_eval"):
    for eps in (0.0, -1e-5, np.nan, np.inf, -np.inf):
        CASES.append(case(name, {"eps": eps}, ValueError, word("eps"), f"eps{eps}"))

for momentum in (np.nan, np.inf, -np.inf):
    CASES.append(case("batch_norm_train", {"momentum": momentum}, ValueError, word("momentum"),
                      f"momentum{momentum}"))
for arg in ("running_mean", "running_var"):
    CASES.append(case("batch_norm_train", {arg: readonly(np.ones(3, np.float32))}, ValueError,
                      all_of(word(arg), "read-only"), f"{arg}-readonly"))
for dtype_id, bad in BAD_DTYPES.items():
    if dtype_id != "str":
        CASES.append(case("batch_norm_backward", {"dy": array_of(bad)}, TypeError,
                          all_of(word("dy"), dtype_id), f"dy-{dtype_id}"))
for shape_id, shape in {"433": (4, 3, 3), "transposed": (2, 3, 4), "2d": (4, 3)}.items():
    CASES.append(case("batch_norm_backward", {"dy": np.ones(shape, np.float32)}, ValueError,
                      all_of(word("dy"), "shape"), f"dy-shape{shape_id}"))

ONE_VALUE = "Expected more than 1 value per channel when training"
for shape_id, (shape, axis) in {"1x3": ((1, 3), 1), "1x3x1x1": ((1, 3, 1, 1), 1),
                                "NHWC-1x1x1x3": ((1, 1, 1, 3), -1), "axis0-3x1": ((3, 1), 0)}.items():
    changes = {"x": np.ones(shape, np.float32), "axis": axis, "out": None}
    CASES.append(case("batch_norm_train", changes, ValueError, ONE_VALUE, f"one-value-{shape_id}"))


def snapshot(params):
    return {k: v.copy() for k, v in params.items() if isinstance(v, np.ndarray)}


def assert_unchanged(params, before):
    for key, old in before.items():
        now = params[key]
        assert now.shape == old.shape and np.array_equal(now, old, equal_nan=now.dtype.kind in "fc"), \
            f"{key} was modified by a call that raised"


@pytest.mark.parametrize("name, changes, exception, match", CASES)
def test_bad_input_raises_and_changes_nothing(name, changes, exception, match):
    params = base_params(name)
    params.update(changes)
    before = snapshot(params)
    fast, _ = fast_and_reference(name)
    with pytest.raises(exception, match=match) as info:
        call(fast, params)
    message = str(info.value)
    assert "Buffer dtype mismatch" not in message and "No matching signature" not in message
    assert_unchanged(params, before)


@pytest.mark.parametrize("bad", ["running_mean", "running_var", "out"])
def test_late_failure_writes_nothing(bad):
    """A bad argument checked last must not leave y or the other buffer half-written."""
    params = base_params("batch_norm_train")
    params[bad] = readonly(params[bad])
    before = snapshot(params)
    with pytest.raises(ValueError, match=all_of(word(bad), "read-only")):
        call(fast_and_reference("batch_norm_train")[0], params)
    assert_unchanged(params, before)


def test_one_value_message_names_the_input_size():
    running_mean, running_var = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=all_of(ONE_VALUE, r"\(1, 3\)")):
        fast_and_reference("batch_norm_train")[0](
            np.ones((1, 3), np.float32), running_mean=running_mean, running_var=running_var)
    assert np.all(running_mean == 0) and np.all(running_var == 1)


def test_eval_with_one_value_per_channel_is_fine():
    """Only training needs more than one value; inference on a single sample works."""
    y = fast_and_reference("batch_norm_eval")[0](
        np.full((1, 3), 2.0, np.float32), np.ones(3, np.float32), np.full(3, 4.0, np.float32), eps=1e-12)
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.5]], rtol=1e-6)


@pytest.mark.parametrize("eps", [1e-300, 1e-30, 10.0], ids=["eps1e-300", "eps1e-30", "eps10"])
def test_small_and_large_positive_eps_are_accepted(eps):
    y, mean, invstd = fast_and_reference("batch_norm_train")[0](np.arange(6.0).reshape(3, 2), eps=eps)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(invstd))


@pytest.mark.parametrize("momentum", [0.0, 1.0, 1.5, -0.5])
def test_finite_momentum_outside_unit_interval_is_accepted(momentum):
    """Only non-finite momentum is an error (PyTorch accepts any float)."""
    running_mean, running_var = np.zeros(2), np.ones(2)
    x = np.arange(6.0).reshape(3, 2)
    fast_and_reference("batch_norm_train")[0](x, running_mean=running_mean, running_var=running_var,
                                              momentum=momentum)
    np.testing.assert_allclose(running_mean, momentum * np.array([2.0, 3.0]))
