"""Data readers: npz, folders of npy/npz, image folders, iterables; validation errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxprune.calibration import Preprocess, open_dataset
from onnxprune.calibration.sources import StoredArray
from onnxprune.errors import DataError, UsageError


def make_model(inputs: dict[str, tuple[list, int]]) -> ir.Model:
    """Identity-like model: each input goes through Relu (or Identity for ints)."""
    nodes, graph_inputs, outputs = [], [], []
    for name, (shape, elem) in inputs.items():
        op = "Relu" if elem in (TensorProto.FLOAT, TensorProto.DOUBLE) else "Identity"
        nodes.append(helper.make_node(op, [name], [name + "_out"]))
        graph_inputs.append(helper.make_tensor_value_info(name, elem, shape))
        outputs.append(helper.make_tensor_value_info(name + "_out", elem, shape))
    graph = helper.make_graph(nodes, "g", graph_inputs, outputs)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


F = TensorProto.FLOAT


@pytest.fixture(scope="module")
def model():
    return make_model({"x": (["N", 3, 4], F)})


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(0).standard_normal((10, 3, 4)).astype(np.float32)


def stack(ds, batch_size=3, key="x"):
    return np.concatenate([b[key] for b in ds.batches(batch_size)])


# --- readers -----------------------------------------------------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_npz_labels_shuffle_limit(tmp_path, model, samples, save):
    path = tmp_path / "data.npz"
    save(path, x=samples, labels=np.arange(10), ids=np.arange(10) * 10)
    ds = open_dataset(path, model, labels="labels", shuffle=True, seed=3, limit=7)
    assert len(ds) == 7 and ds.input_names == ["x"]
    batches = list(ds.batches(3))
    assert [len(b["x"]) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(stack(ds), samples[ds.labels])  # labels follow the shuffle
    np.testing.assert_array_equal(ds.extra("ids"), ds.labels * 10)
    again = open_dataset(path, model, labels="labels", shuffle=True, seed=3, limit=7)
    np.testing.assert_array_equal(again.labels, ds.labels)  # seeded
    assert len(set(ds.labels)) == 7


def test_stored_arrays_are_read_by_rows(tmp_path, model, samples):
    np.savez(tmp_path / "data.npz", x=samples)
    np.save(tmp_path / "data.npy", samples)
    for path in (tmp_path / "data.npz", tmp_path / "data.npy"):
        ds = open_dataset(path, model, shuffle=True)
        stored = ds._parts[0]._read("x")
        assert isinstance(stored, StoredArray)  # nothing loaded or mapped up front
        rows = np.array([7, 2, 3, 3, 9, 0])
        np.testing.assert_array_equal(stored[rows], samples[rows])
        np.testing.assert_array_equal(np.sort(stack(ds), axis=0), np.sort(samples, axis=0))
    fortran = np.asfortranarray(samples)  # not row-contiguous: loaded by numpy instead
    np.savez(tmp_path / "f.npz", x=fortran)
    np.save(tmp_path / "f.npy", fortran)
    for path in (tmp_path / "f.npz", tmp_path / "f.npy"):
        np.testing.assert_array_equal(stack(open_dataset(path, model)), samples)
    truncated = tmp_path / "short.npy"
    truncated.write_bytes((tmp_path / "data.npy").read_bytes()[:-8])
    with pytest.raises(DataError, match="short.npy"):
        list(open_dataset(truncated, model).batches(4))


def test_npz_single_array_of_any_name(tmp_path, model, samples):
    np.savez(tmp_path / "d.npz", samples)  # key 'arr_0'
    np.testing.assert_array_equal(stack(open_dataset(tmp_path / "d.npz", model)), samples)


def test_folder_of_npy_samples_and_batches(tmp_path, model, samples):
    for i in range(4):
        np.save(tmp_path / f"a{i}.npy", samples[i])  # one sample per file
    np.save(tmp_path / "b.npy", samples[4:10])  # a batch
    ds = open_dataset(tmp_path, model)
    assert len(ds) == 10
    np.testing.assert_array_equal(stack(ds, 4), samples)


def test_folder_of_npz(tmp_path, model, samples):
    np.savez(tmp_path / "0.npz", x=samples[:6], labels=np.arange(6))
    np.savez_compressed(tmp_path / "1.npz", x=samples[6:], labels=np.arange(6, 10))
    ds = open_dataset(tmp_path, model, labels="labels")
    np.testing.assert_array_equal(stack(ds, 4), samples)
    np.testing.assert_array_equal(ds.labels, np.arange(10))


def test_iterables_and_dicts(model, samples):
    items = [{"x": samples[i]} for i in range(4)] + [{"x": samples[4:]}]
    np.testing.assert_array_equal(stack(open_dataset(items, model)), samples)
    generator = ({"x": s} for s in samples)
    ds = open_dataset(generator, model, limit=5)
    assert len(ds) == 5
    np.testing.assert_array_equal(stack(open_dataset({"x": samples}, model)), samples)
    np.testing.assert_array_equal(stack(open_dataset(list(samples), model)), samples)  # bare arrays


def test_without_model_arrays_are_batches(samples):
    ds = open_dataset({"a": samples, "b": samples[:, 0]})
    assert ds.input_names == ["a", "b"] and len(ds) == 10


def test_variable_shapes_never_share_a_batch(tmp_path):
    model = make_model({"tokens": (["N", "seq", 4], F)})
    rng = np.random.default_rng(1)
    items = [{"tokens": rng.standard_normal((1, n, 4)).astype(np.float32)} for n in (5, 5, 7, 7, 7, 5)]
    shapes = [b["tokens"].shape for b in open_dataset(items, model).batches(4)]
    assert shapes == [(2, 5, 4), (2, 7, 4), (1, 7, 4), (1, 5, 4)]


def test_fixed_batch_model(samples):
    fixed = make_model({"x": ([4, 3, 4], F)})
    with pytest.warns(UserWarning, match="exactly 4"):
        ds = open_dataset({"x": samples}, fixed)
    assert len(ds) == 8
    assert [b["x"].shape[0] for b in ds.batches(3)] == [4, 4]
    one = make_model({"x": ([1, 3, 4], F)})
    assert {b["x"].shape[0] for b in open_dataset({"x": samples}, one).batches(8)} == {1}


def test_multi_input_and_safe_casts():
    model = make_model({"a": (["N", 2], F), "ids": (["N", 3], TensorProto.INT32)})
    data = {"a": np.ones((5, 2), np.float64), "ids": np.arange(15, dtype=np.int64).reshape(5, 3)}
    batch = next(open_dataset(data, model).batches(5))
    assert batch["a"].dtype == np.float32 and batch["ids"].dtype == np.int32
    data["ids"] = data["ids"] + 2**40
    with pytest.raises(DataError, match="outside the model's int32"):
        list(open_dataset(data, model).batches(5))


def test_synthetic_is_explicit_and_warns(model):
    with pytest.warns(UserWarning, match="synthetic"):
        ds = open_dataset(None, model, synthetic=True, limit=5)
    first = stack(ds, 2)
    assert first.shape == (5, 3, 4) and np.isfinite(first).all()
    np.testing.assert_array_equal(stack(ds, 5), first)  # independent of batching
    with pytest.raises(UsageError, match="no data"):
        open_dataset(None, model)


# --- images --------------------------------------------------------------------------------


def write_images(folder, count, size=(12, 16), seed=0):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder_with_classes(tmp_path):
    model = make_model({"img": (["N", 3, 8, 8], F)})
    write_images(tmp_path / "cat", 3)
    write_images(tmp_path / "dog", 2, seed=1)
    ds = open_dataset(tmp_path, model)  # size taken from the model
    assert ds.classes == ["cat", "dog"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1])
    batch = next(ds.batches(5))["img"]
    assert batch.shape == (5, 3, 8, 8) and batch.dtype == np.float32
    assert 0 <= batch.min() and batch.max() <= 1


def test_preprocess_values_nhwc_bgr(tmp_path):
    from PIL import Image

    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0], pixels[..., 2] = 255, 51  # R = 255, B = 51
    Image.fromarray(pixels).save(tmp_path / "a.png")
    model = make_model({"img": (["N", 2, 2, 3], F)})
    prep = Preprocess.parse("resize=4,crop=2,scale=1/255,mean=0.2:0:1,std=0.5:1:1,color=bgr")
    sample = next(open_dataset(tmp_path, model, preprocess=prep).batches(1))["img"][0]
    assert sample.shape == (2, 2, 3)  # layout nhwc taken from the model
    np.testing.assert_allclose(sample[0, 0], [(0.2 - 0.2) / 0.5, 0.0, 1.0 - 1.0], atol=1e-6)


def test_preprocess_config_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"resize": 256, "crop": [224, 200], "mean": [0.5, 0.5, 0.5]}))
    (tmp_path / "p.toml").write_text('[preprocess]\nresize = "256"\ncrop = "224x200"\nscale = "1/255"\n')
    a, b = Preprocess.parse(str(tmp_path / "p.json")), Preprocess.from_file(tmp_path / "p.toml")
    assert a.resize == b.resize == 256 and a.crop == b.crop == (224, 200)
    assert b.scale == pytest.approx(1 / 255)
    with pytest.raises(UsageError, match="unknown key"):
        Preprocess.parse("size=3")
    with pytest.raises(UsageError, match="layout"):
        Preprocess.parse("layout=chw")


def test_unreadable_image_names_the_file(tmp_path):
    model = make_model({"img": (["N", 3, 8, 8], F)})
    write_images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        list(open_dataset(tmp_path, model).batches(4))


# --- bad input -----------------------------------------------------------------------------


def test_missing_input_names_it_and_the_data_keys(tmp_path, model, samples):
    np.savez(tmp_path / "d.npz", y=samples, labels=np.arange(10))
    with pytest.raises(DataError, match=r"model input 'x' is missing \(data has: 'y', 'labels'\)"):
        open_dataset(tmp_path / "d.npz", model, labels="labels")
    with pytest.raises(DataError, match="labels 'lbl' not found"):
        open_dataset({"x": samples}, model, labels="lbl")


def test_shape_mismatch_says_expected_and_given(model, samples):
    with pytest.raises(DataError, match=r"input 'x': expected samples of shape \[3, 4\] .*got \[3, 5\]"):
        open_dataset({"x": np.zeros((10, 3, 5), np.float32)}, model)
    with pytest.raises(DataError, match=r"different numbers of samples"):
        two = make_model({"a": (["N", 2], F), "b": (["N", 2], F)})
        open_dataset({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, two)


def test_unsafe_dtype_is_refused(model):
    with pytest.raises(DataError, match="model expects float32, .* has complex64"):
        open_dataset({"x": np.zeros((2, 3, 4), np.complex64)}, model)
    ints = make_model({"ids": (["N", 3], TensorProto.INT64)})
    with pytest.raises(DataError, match="model expects int64, .* has float32"):
        open_dataset({"ids": np.zeros((2, 3), np.float32)}, ints)


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_inf_name_input_and_sample(model, samples, bad, word):
    data = samples.copy()
    data[6, 1, 2] = bad
    with pytest.raises(DataError, match=rf"input 'x': sample 6 \(arrays, row 6\) contains {word}"):
        list(open_dataset({"x": data}, model).batches(4))


def test_empty_sources(tmp_path, model):
    with pytest.raises(DataError, match="empty"):
        open_dataset([], model)
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 3, 4), np.float32))
    with pytest.raises(DataError, match="empty"):
        open_dataset(tmp_path / "e.npz", model)
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="no .npy, .npz or image files"):
        open_dataset(tmp_path / "folder", model)
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "missing.npz", model)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        open_dataset(tmp_path / "bad.npz", model)


def test_misaligned_labels(model, samples):
    ds = open_dataset({"x": samples, "labels": np.arange(4)}, model, labels="labels")
    with pytest.raises(DataError, match="'labels' has 4 rows but the inputs have 10 samples"):
        _ = ds.labels


def test_bad_batch_size_and_limit(model, samples):
    with pytest.raises(UsageError):
        open_dataset({"x": samples}, model, limit=0)
    with pytest.raises(UsageError):
        next(open_dataset({"x": samples}, model).batches(0))


def test_no_warning_for_plain_use(model, samples):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(open_dataset({"x": samples}, model).batches(4))
