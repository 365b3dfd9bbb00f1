"""Each kind of bad input gets an error that names the culprit."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetrain
from edgetrain import (InputError, ModelLoadError, ShapeError, UnsupportedDtypeError,
                       UnsupportedOpError)
from oracle import make_model, value_info


def _add_model(x_shape=("N", 3), y_shape=("N", 3)):
    return make_model([helper.make_node("Add", ["X", "Y"], ["Z"], name="the_add")],
                      [value_info("X", TensorProto.FLOAT, x_shape),
                       value_info("Y", TensorProto.FLOAT, y_shape)],
                      [value_info("Z", TensorProto.FLOAT, None)])


# --- UnsupportedOpError -----------------------------------------------------------------------

def test_unknown_op_names_op_domain_opset_node_and_supported():
    m = make_model([helper.make_node("FancyOp", ["X"], ["Y"], name="my_node")],
                   [value_info("X", TensorProto.FLOAT, [2])],
                   [value_info("Y", TensorProto.FLOAT, [2])], opset=17)
    with pytest.raises(UnsupportedOpError) as e:
        edgetrain.InferenceSession(m).run(None, {"X": np.zeros(2, np.float32)})
    msg = str(e.value)
    for part in ("FancyOp", "ai.onnx", "opset 17", "my_node", "Add", "MatMul"):
        assert part in msg, (part, msg)
    assert e.value.op_type == "FancyOp" and e.value.node_name == "my_node"


def test_custom_domain_op_is_refused_by_name():
    m = make_model([helper.make_node("FusedGelu", ["X"], ["Y"], name="fg",
                                     domain="com.microsoft")],
                   [value_info("X", TensorProto.FLOAT, [2])],
                   [value_info("Y", TensorProto.FLOAT, [2])],
                   domains=("com.microsoft",))
    with pytest.raises(UnsupportedOpError, match=r"FusedGelu.*com\.microsoft.*fg"):
        edgetrain.InferenceSession(m).run(None, {"X": np.zeros(2, np.float32)})


def test_op_version_not_implemented_names_the_version():
    m = _add_model()
    m.opset_import[0].version = 6  # selects Add-6 (legacy broadcast attribute)
    with pytest.raises(UnsupportedOpError, match=r"Add-6.*implements versions"):
        edgetrain.InferenceSession(m).run(None, {"X": np.zeros((1, 3), np.float32),
                                                 "Y": np.zeros((1, 3), np.float32)})


def test_unsupported_dtype_names_the_value():
    m = make_model([helper.make_node("Relu", ["X"], ["Y"])],
                   [value_info("X", TensorProto.BFLOAT16, [2])],
                   [value_info("Y", TensorProto.BFLOAT16, [2])])
    sess = edgetrain.InferenceSession(m)
    x = np.zeros(2, dtype=sess.get_inputs()[0].dtype)
    with pytest.raises(UnsupportedDtypeError, match=r"'X'.*bfloat16"):
        sess.run(None, {"X": x})


# --- ModelLoadError ---------------------------------------------------------------------------

def test_garbage_bytes():
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        edgetrain.InferenceSession(b"\xff\xfe this is not protobuf \x00\x01")


def test_empty_and_missing_file(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        edgetrain.InferenceSession(empty)
    with pytest.raises(ModelLoadError, match="does not exist"):
        edgetrain.InferenceSession(tmp_path / "nope.onnx")


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, fraction):
    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "W")
    m = make_model([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
                   [value_info("X", TensorProto.FLOAT, ["N", 64])],
                   [value_info("Y", TensorProto.FLOAT, ["N", 64])], [w])
    data = m.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError) as e:
        edgetrain.InferenceSession(path)
    assert "cut.onnx" in str(e.value) or "truncated" in str(e.value)


def _external_model(tmp_path, location):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for k, v in {"location": location, "offset": "0", "length": "64"}.items():
        e = w.external_data.add()
        e.key, e.value = k, v
    m = make_model([helper.make_node("MatMul", ["X", "W"], ["Y"])],
                   [value_info("X", TensorProto.FLOAT, [1, 4])],
                   [value_info("Y", TensorProto.FLOAT, [1, 4])], [w])
    folder = tmp_path / "model_dir"
    folder.mkdir()
    path = folder / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_inside_folder_loads(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.ones((4, 4), np.float32).tobytes())
    (y,) = edgetrain.InferenceSession(path).run(None, {"X": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(y, np.full((1, 4), 4.0, np.float32))


@pytest.mark.parametrize("location", ["../secret.bin", "../../etc/passwd", "/etc/passwd",
                                      "sub/../../secret.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    path = _external_model(tmp_path, location)
    with pytest.raises(ModelLoadError, match=r"'W'.*outside the model's folder"):
        edgetrain.InferenceSession(path)


def test_external_data_symlink_escaping_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    path = _external_model(tmp_path, "link.bin")
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        edgetrain.InferenceSession(path)


def test_external_data_missing_and_short(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    with pytest.raises(ModelLoadError, match=r"'W'.*missing"):
        edgetrain.InferenceSession(path)
    (path.parent / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ModelLoadError, match=r"'W'.*truncated"):
        edgetrain.InferenceSession(path)


def test_external_data_from_bytes_needs_a_folder(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.ones((4, 4), np.float32).tobytes())
    with pytest.raises(ModelLoadError, match="base_dir"):
        edgetrain.InferenceSession(path.read_bytes())
    sess = edgetrain.InferenceSession(path.read_bytes(), base_dir=path.parent)
    assert sess.run(None, {"X": np.ones((1, 4), np.float32)})[0].shape == (1, 4)


def test_undefined_value_is_a_load_error():
    m = make_model([helper.make_node("Relu", ["nowhere"], ["Y"], name="r")],
                   [value_info("X", TensorProto.FLOAT, [2])],
                   [value_info("Y", TensorProto.FLOAT, [2])])
    with pytest.raises(ModelLoadError, match=r"'r'.*'nowhere'"):
        edgetrain.InferenceSession(m)


# --- InputError -------------------------------------------------------------------------------

def test_wrong_input_name_lists_expected():
    sess = edgetrain.InferenceSession(_add_model())
    with pytest.raises(InputError, match=r"unknown input 'x'.*X float32\[N, 3\]"):
        sess.run(None, {"x": np.zeros((1, 3), np.float32), "Y": np.zeros((1, 3), np.float32)})


def test_missing_input():
    sess = edgetrain.InferenceSession(_add_model())
    with pytest.raises(InputError, match=r"missing input\(s\) 'Y'"):
        sess.run(None, {"X": np.zeros((1, 3), np.float32)})


def test_wrong_dtype_names_input_given_expected():
    sess = edgetrain.InferenceSession(_add_model())
    with pytest.raises(InputError, match=r"'X' has dtype float64, expected float32"):
        sess.run(None, {"X": np.zeros((1, 3)), "Y": np.zeros((1, 3), np.float32)})


@pytest.mark.parametrize("shape", [(1, 4), (3,), (1, 3, 1)])
def test_wrong_shape_names_input_given_expected(shape):
    sess = edgetrain.InferenceSession(_add_model())
    with pytest.raises(InputError, match=r"'X' has shape \[.*\], expected float32\[N, 3\]"):
        sess.run(None, {"X": np.zeros(shape, np.float32), "Y": np.zeros((1, 3), np.float32)})


def test_unknown_output_name():
    sess = edgetrain.InferenceSession(_add_model())
    feeds = {"X": np.zeros((1, 3), np.float32), "Y": np.zeros((1, 3), np.float32)}
    with pytest.raises(InputError, match=r"unknown output 'W'.*Z"):
        sess.run(["W"], feeds)


# --- ShapeError -------------------------------------------------------------------------------

def test_shapes_that_do_not_broadcast_name_the_node():
    sess = edgetrain.InferenceSession(_add_model(("N", 3), ("M", 3)))
    with pytest.raises(ShapeError, match=r"Add node 'the_add'.*float32\[2, 3\].*float32\[3, 3\]"):
        sess.run(None, {"X": np.zeros((2, 3), np.float32), "Y": np.zeros((3, 3), np.float32)})


def test_failed_run_leaves_session_usable():
    sess = edgetrain.InferenceSession(_add_model(("N", 3), ("M", 3)))
    with pytest.raises(ShapeError):
        sess.run(None, {"X": np.zeros((2, 3), np.float32), "Y": np.zeros((3, 3), np.float32)})
    (z,) = sess.run(None, {"X": np.ones((2, 3), np.float32), "Y": np.ones((1, 3), np.float32)})
    np.testing.assert_array_equal(z, np.full((2, 3), 2, np.float32))
