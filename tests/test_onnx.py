"""ONNX export (the onnx extra): every architecture fastcnn builds, checked by onnx and run by
onnxruntime when it is installed, against fastcnn's own eval-mode outputs."""

import json
import os
import sys

import numpy as np
import pytest
from test_cli import cli

import fastcnn
from fastcnn import models, nn, optim

onnx = pytest.importorskip("onnx")


def trained(model, shape, steps=3, seed=0):
    """A model a few SGD steps on (BatchNorm's running statistics away from 0 and 1)."""
    rng = np.random.default_rng(seed)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        x = rng.standard_normal((8, *shape), dtype=np.float32) * 2 + 0.3
        opt.zero_grad()
        loss_fn(model(x), rng.integers(0, 10, 8))
        model.backward(loss_fn.backward())
        opt.step()
    return model.eval()


ARCHS = {
    "seednet": (lambda: models.seednet(1, 10, 28), (1, 28, 28)),
    "resnet8": (lambda: models.resnet8(3, 10), (3, 32, 32)),
    "resnet20": (lambda: models.resnet20(1, 10), (1, 28, 28)),
    "dropout-bn": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.BatchNorm2d(8),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(8 * 16, 10),
        ),  # fmt: skip
        (3, 8, 8),
    ),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_export_matches_fastcnn(arch, tmp_path):
    nn.manual_seed(0)
    make, shape = ARCHS[arch]
    model = trained(make(), shape)
    model.classes = [f"c{i}" for i in range(10)]
    path = fastcnn.export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["classes"] == model.classes
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # a dynamic batch dimension
        x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
        want = model(x)
        got = session.run(None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert not model.training  # the model is left as it was (eval here)


def test_unknown_layers_and_missing_onnx(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Residual(nn.ReLU()))
    with pytest.raises(TypeError, match="Residual"):
        fastcnn.export_onnx(model, tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"fastcnn\[onnx\]"):
        fastcnn.export_onnx(models.seednet(), tmp_path / "m.onnx")


def test_cli_export(tmp_path):
    nn.manual_seed(0)
    model = trained(models.resnet8(1, 10), (1, 28, 28))
    model.classes = list("abcdefghij")
    model.preprocessing = {"image_size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.25]}
    fastcnn.save(model, tmp_path / "m.safetensors")
    result = cli("export", "m.safetensors", "m.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["preprocessing"]["mean"] == [0.5] and meta["classes"][0] == "a"
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 28, 28]
    assert os.path.getsize(tmp_path / "m.onnx") > 70_000 * 4  # the weights are in it
