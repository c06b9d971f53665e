"""The `fastcnn` command, run as a user runs it: in a subprocess."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fastcnn
from fastcnn import data

# The subprocess must import the fastcnn these tests import (a source checkout or an install).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastcnn.__file__)))


def cli(*args, cwd, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.pop("FASTCNN_PROGRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "fastcnn.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(result):
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastcnn: error: "), lines[0]


def make_folder(root, per_class=12, seed=0):
    """Two classes (dark / bright), PNG and JPEG, different sizes and modes."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(["dark", "bright"]):
        os.makedirs(root / name)
        for i in range(per_class):
            h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
            lo = 0 if label == 0 else 150
            a = rng.integers(lo, lo + 100, (h, w, 3)).astype(np.uint8)
            img = Image.fromarray(a)
            if i % 3 == 0:
                img.save(root / name / f"{i}.jpg", quality=90)
            elif i % 3 == 1:
                img.convert("L").save(root / name / f"{i}.png")
            else:
                img.convert("RGBA").save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding images/ and a model trained on it by `fastcnn train`."""
    root = tmp_path_factory.mktemp("cli")
    make_folder(root / "images")
    os.makedirs(root / "tmp")
    result = cli(
        "train",
        "images",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--out",
        "tmp/model.safetensors",
        "--quiet",
        cwd=root,
    )
    return root, result


def test_info(tmp_path):
    result = cli("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"fastcnn {fastcnn.__version__}" in out
    assert fastcnn.ops.gemm_kernel() in out
    assert "threads" in out and "cuda" in out.lower()
    assert "conv algorithm: auto (Winograd for stride-1 layers: F(2x2, 5x5)" in out
    assert result.stderr == ""
    one = cli("--threads", "1", "info", cwd=tmp_path)
    assert one.returncode == 0 and "threads: 1" in one.stdout


def test_console_script_if_installed(tmp_path):
    exe = shutil.which("fastcnn")
    if exe is None:
        pytest.skip("the `fastcnn` console script is not installed (pip install .)")
    result = subprocess.run([exe, "info"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "fastcnn" in result.stdout


def test_train_writes_a_model(workdir):
    root, result = workdir
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "model saved to tmp/model.safetensors" in result.stdout
    assert sorted(os.listdir(root / "tmp")) == ["model.history.csv", "model.safetensors"]
    model = fastcnn.load(root / "tmp" / "model.safetensors")
    assert model.classes == ["bright", "dark"]
    assert model.preprocessing["image_size"] == [16, 16]
    assert model.preprocessing["channels"] == 3
    assert model[0].weight.shape == (32, 3, 5, 5)


def test_train_grey_images_with_channels_1(tmp_path):
    make_folder(tmp_path / "images", per_class=6)
    result = cli(
        "train",
        "images",
        "--epochs",
        "1",
        "--image-size",
        "12",
        "--channels",
        "1",
        "--batch-size",
        "4",
        "--out",
        "grey.safetensors",
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    model = fastcnn.load(tmp_path / "grey.safetensors")
    assert model.preprocessing["channels"] == 1 and model[0].weight.shape[1] == 1


@pytest.mark.parametrize(
    "options",
    [
        ["--optimizer", "sgd", "--nesterov", "--weight-decay", "5e-4", "--schedule", "onecycle"],
        ["--optimizer", "adamw", "--schedule", "cosine", "--label-smoothing", "0.1"],
        ["--optimizer", "adam", "--weight-decay", "1e-4", "--schedule", "step"],
        ["--augment"],
        ["--arch", "resnet8", "--schedule", "onecycle", "--nesterov", "--augment"],
    ],
    ids=["sgd-onecycle", "adamw-cosine", "adam-step", "augment", "resnet8"],
)
def test_train_with_optimizer_schedule_and_smoothing(options, tmp_path):
    make_folder(tmp_path / "images", per_class=6)
    args = ["train", "images", "--epochs", "2", "--image-size", "12", "--batch-size", "4"]
    result = cli(*args, *options, "--out", "m.safetensors", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fastcnn.load(tmp_path / "m.safetensors").classes == ["bright", "dark"]


def test_resume_refuses_another_schedule(tmp_path):
    make_folder(tmp_path / "images", per_class=6)
    args = ["train", "images", "--image-size", "12", "--batch-size", "4", "--quiet"]
    args += ["--epochs", "3", "--checkpoint", "run.ckpt.safetensors"]
    first = cli(*args, "--schedule", "cosine", "--out", "m.safetensors", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    other = cli(*args, "--schedule", "step", "--resume", cwd=tmp_path)
    assert_clean_error(other)
    assert "CosineAnnealingLR there, StepLR here" in other.stderr


def test_predict_png_and_jpeg(workdir):
    root, _ = workdir
    images = ["images/dark/0.jpg", "images/bright/1.png", "images/dark/2.png"]
    result = cli("predict", "tmp/model.safetensors", *images, cwd=root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(images)
    model = fastcnn.load(root / "tmp" / "model.safetensors")
    for line, path in zip(lines, images):
        got_path, label, confidence = line.split("\t")
        assert got_path == path
        assert label in model.classes
        assert 0.5 <= float(confidence) <= 1.0  # the top one of two classes
        probs = fastcnn.predict(model, root / path)[0]
        assert label == model.classes[int(probs.argmax())]
        assert float(confidence) == pytest.approx(float(probs.max()), abs=1e-4)


def test_eval_on_the_folder(workdir):
    root, _ = workdir
    result = cli("eval", "tmp/model.safetensors", "images", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "24 images" in result.stdout
    model = fastcnn.load(root / "tmp" / "model.safetensors")
    p = model.preprocessing
    folder = data.ImageFolder(
        root / "images",
        p["image_size"],
        p["channels"],
        mean=p["mean"],
        std=p["std"],
        classes=model.classes,
    )
    scores = fastcnn.evaluate(model, folder)
    assert f"accuracy {scores['accuracy']:.4f}" in result.stdout
    assert f"loss {scores['loss']:.4f}" in result.stdout


def _corrupt(root):
    path = root / "corrupt.safetensors"
    data_ = (root / "tmp" / "model.safetensors").read_bytes()
    path.write_bytes(data_[: len(data_) // 3])
    return path.name


def _not_an_image(root):
    (root / "notes.png").write_text("this is text, not a PNG\n")
    return "notes.png"


ERROR_CASES = {
    "train_missing_data_folder": lambda r: [
        "train",
        "no-such-folder",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        "x.safetensors",
    ],
    "train_empty_data_folder": lambda r: (
        os.makedirs(r / "empty", exist_ok=True),
        ["train", "empty", "--epochs", "1", "--quiet"],
    )[1],
    "predict_corrupt_model": lambda r: ["predict", _corrupt(r), "images/dark/0.jpg"],
    "eval_corrupt_model": lambda r: ["eval", _corrupt(r), "images"],
    "predict_missing_model": lambda r: ["predict", "missing.safetensors", "images/dark/0.jpg"],
    "predict_image_as_model": lambda r: ["predict", "images/dark/1.png", "images/dark/0.jpg"],
    "predict_missing_image": lambda r: ["predict", "tmp/model.safetensors", "nope.jpg"],
    "predict_non_image_file": lambda r: ["predict", "tmp/model.safetensors", _not_an_image(r)],
    "predict_folder_as_image": lambda r: ["predict", "tmp/model.safetensors", "images"],
    "eval_missing_data_folder": lambda r: ["eval", "tmp/model.safetensors", "nowhere"],
    "train_nesterov_with_adam": lambda r: [
        *["train", "images", "--epochs", "1", "--image-size", "16", "--optimizer", "adam"],
        *["--nesterov", "--quiet", "--out", "x.safetensors"],
    ],
    "train_label_smoothing_out_of_range": lambda r: [
        *["train", "images", "--epochs", "1", "--image-size", "16", "--label-smoothing", "1.5"],
        *["--quiet", "--out", "x.safetensors"],
    ],
    "train_bad_lr": lambda r: [
        "train",
        "images",
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--lr",
        "-1",
        "--quiet",
        "--out",
        "x.safetensors",
    ],
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_gives_a_one_line_error(case, workdir):
    root, _ = workdir
    result = cli(*ERROR_CASES[case](root), cwd=root)
    assert_clean_error(result)
    assert result.returncode == 1
    assert not (root / "x.safetensors").exists()


def test_predict_reports_the_bad_file_by_name(workdir):
    root, _ = workdir
    result = cli("predict", "tmp/model.safetensors", "nope.jpg", cwd=root)
    assert "nope.jpg" in result.stderr


def test_out_in_a_missing_folder_does_not_waste_the_training(tmp_path):
    """Either the folder is created, or the run stops before training, naming the path given
    (not a temporary file the user never asked for)."""
    make_folder(tmp_path / "images", per_class=6)
    result = cli(
        "train",
        "images",
        "--epochs",
        "1",
        "--image-size",
        "12",
        "--out",
        "new/dir/model.safetensors",
        "--quiet",
        cwd=tmp_path,
    )
    if result.returncode == 0:
        fastcnn.load(tmp_path / "new" / "dir" / "model.safetensors")
    else:
        assert_clean_error(result)
        assert "new/dir" in result.stderr and ".tmp" not in result.stderr
        assert "trained" not in result.stdout


def test_argparse_errors_exit_2_without_traceback(tmp_path):
    result = cli("train", "images", "--channels", "2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--channels" in result.stderr
    result = cli("frobnicate", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
