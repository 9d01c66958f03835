"""Image classifiers: a CNN backbone with a backbone/head split (timm's forward_features / forward_head).

Networks come from `ARCHITECTURES` (name -> builder); each offers forward_features and forward_head,
and says which modules form its head, where LoRA goes and how inputs are
normalised. A saved model is a folder with `model.safetensors` (the network's own parameter
names) and `vision.json` (architecture, labels, input size, normalisation).
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import assets
from ..data.images import ImageItems, random_resized_crop, resize_center_crop, to_tensor
from ..errors import UserError
from .base import Head

CONFIG_FILE = "vision.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
CROP_FRACTION = 0.875  # evaluation: resize to size / 0.875, keep the central size x size (as for ImageNet)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, each halving the resolution, then global average pooling and a linear layer.

    Small enough to train from scratch on a CPU; the tests use it as a stand-in backbone.
    """

    head_modules = ("classifier",)
    lora_targets = ("conv",)
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        blocks, channels = [], 3
        for width in widths:
            blocks.append(nn.Sequential(OrderedDict(
                conv=nn.Conv2d(channels, width, 3, padding=1, bias=False),
                norm=nn.BatchNorm2d(width),
                act=nn.ReLU(),
                pool=nn.MaxPool2d(2),
            )))  # fmt: skip
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, num_classes)

    @classmethod
    def build(cls, num_classes: int, image_size: int, widths: list[int] = (16, 32, 64)) -> SmallCNN:
        return cls(num_classes, tuple(widths))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean((2, 3))  # (B, C)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _efficientnet_lite0(num_classes: int, image_size: int) -> nn.Module:
    try:
        from .efficientnet import EfficientNetLite
    except ImportError:
        raise UserError(f"efficientnet-lite0 needs its code package; install it with: {assets.MODELS['efficientnet-lite0'].install}") from None
    return EfficientNetLite.build(num_classes, image_size, "efficientnet-lite0")


# Architecture name -> builder(num_classes, image_size, **arguments). A plain dict that grep finds.
ARCHITECTURES = {
    "efficientnet-lite0": _efficientnet_lite0,
    "small-cnn": SmallCNN.build,
}


@dataclass
class ImageConfig:
    """What `vision.json` holds: enough to rebuild the network and its input pipeline."""

    architecture: str
    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    crop_fraction: float = CROP_FRACTION
    arguments: dict = field(default_factory=dict)
    """Keyword arguments of the architecture's builder (e.g. small-cnn widths)."""


class ImageClassifier(nn.Module):
    """A CNN with `forward_features` (backbone) and `forward_head` (task head); the same face as TextClassifier."""

    kind = "image"
    outputs_per_token = 0
    peft_task_type = None  # peft wraps the network as a plain module
    modality = "image"
    reads_pairs = False  # (text, text_pair) inputs, tokenized as a pair
    pad_id = 0  # images are never padded

    def __init__(self, net: nn.Module, config: ImageConfig):
        super().__init__()
        self.net = net
        self.config = config
        # Fine-tuning keeps the pre-trained batch-norm statistics (only the affine weights train):
        # statistics of a few small batches from another domain (grey Fashion-MNIST after ImageNet)
        # replace them and the loss jumps at the first step (Keras's fine-tuning guide does the same).
        # Random weights have no statistics worth keeping: `reinitialize` turns this off.
        self.keep_norm_statistics = True

    @property
    def label_names(self) -> list[str]:
        return self.config.labels

    can_split = True  # every architecture in ARCHITECTURES offers forward_features / forward_head

    @property
    def head(self) -> Head:
        return Head(tuple(self.net.head_modules), lambda net, features: net.forward_head(features))

    @property
    def lora_targets(self) -> list[str]:
        return list(self.net.lora_targets)

    def read_inputs(self, path: str | None, text: str | None, column: str, pair: str | None = None, pair_column: str | None = None):
        """What `predict` reads for this model (data/inputs.py)."""
        from ..data.inputs import image_inputs

        return image_inputs(path, text, column, pair, pair_column)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)  # (B, num_labels)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(pixel_values)  # (B, C)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(features)

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [
            (name, p)
            for name, p in self.net.named_parameters()
            if any(name == m or name.startswith(m + ".") for m in self.head.modules)
        ]

    def train(self, mode: bool = True) -> ImageClassifier:
        """Train mode, except batch norm that keeps its pre-trained statistics: all of it while
        `keep_norm_statistics`, else the layers whose weights are frozen.

        Without this a frozen backbone (LoRA, a frozen part) would still move its running
        means to the new data's, and normalise training batches by batch statistics.
        """
        super().train(mode)
        for module in self.modules():
            params = list(module.parameters(recurse=False))
            frozen = bool(params) and not any(p.requires_grad for p in params)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and (self.keep_norm_statistics or frozen):
                module.eval()
        return self

    def encode(self, examples, targets: list | None, train: bool = False, note=lambda message: None) -> ImageItems:
        """Loader items made on access: a random crop and flip for training, the center crop otherwise."""
        c = self.config
        if train:
            view = lambda img, rng: random_resized_crop(img, c.image_size, rng)  # noqa: E731
        else:
            view = lambda img, rng: resize_center_crop(img, c.image_size, c.crop_fraction)  # noqa: E731
        # The run's seed: same seed, same crops.
        seed = torch.initial_seed() if train else None
        return ImageItems(list(examples.inputs), targets, lambda img, rng: to_tensor(view(img, rng), c.mean, c.std), seed)

    def add_adapter(self, peft_config) -> None:
        from peft import get_peft_model

        self.net = get_peft_model(self.net, peft_config)

    def reinitialize(self) -> None:
        """Random weights in the same architecture (PyTorch's default initialisation, fresh norm statistics)."""
        for module in self.net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                # PyTorch's momentum: TensorFlow-style 0.01 (EfficientNet's) lets the running statistics
                # lag far behind weights that start random, and the eval-mode network predicts one class.
                module.momentum = 0.1
        self.keep_norm_statistics = False

    def save(self, folder: Path) -> None:
        """model.safetensors + vision.json. LoRA updates are merged in: the folder is a plain network."""
        from peft import PeftModel
        from safetensors.torch import save_file

        net = copy.deepcopy(self.net).merge_and_unload() if isinstance(self.net, PeftModel) else self.net
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))


def is_image_model(location, architecture: str | None) -> bool:
    """Whether a located model is an image network (built-in, saved folder, or a weights file)."""
    if location.builtin is not None:
        return location.builtin.modality == "image"
    path = location.path
    return architecture is not None or (path / CONFIG_FILE).is_file() or path.suffix.lower() in WEIGHTS_SUFFIXES


def load_image_classifier(name: str, label_names: list[str], image_size: int, architecture: str | None = None) -> ImageClassifier:
    """A pre-trained network (built-in name, saved folder or weights file) with a head for `label_names`.

    A head whose size already fits (a folder fine-tuned earlier on as many labels) is kept.
    """
    arguments = {}
    location = assets.locate_model(name)
    if location.builtin is not None:
        architecture, weights = name, location.path
    elif (location.path / CONFIG_FILE).is_file():
        saved = read_config(location.path)
        architecture, arguments, weights = saved.architecture, saved.arguments, location.path / WEIGHTS_FILE
    else:
        weights = location.path
        if not weights.is_file():
            raise UserError(f"'{name}' is neither a saved image model folder (with {CONFIG_FILE}) nor a weights file; check the path")
        if architecture is None:
            raise UserError(f"weights file '{name}' needs model.architecture (one of: {', '.join(ARCHITECTURES)})")
    net = build_network(architecture, len(label_names), image_size, arguments)
    load_weights(net, read_weights(weights), weights)
    config = ImageConfig(architecture, list(label_names), image_size, list(net.mean), list(net.std), arguments=arguments)
    return ImageClassifier(net, config)


def load(cfg, head: dict, note=lambda message: None) -> ImageClassifier:
    """The image network `cfg` (a RunConfig) names, with a head for the labels `head` asks for."""
    m = cfg.model
    return load_image_classifier(m.name, head["labels"], m.image_size, m.architecture)


def load_saved(folder: Path) -> ImageClassifier:
    """A classifier saved by `transferkit train`, in eval mode."""
    config = read_config(folder)
    net = build_network(config.architecture, len(config.labels), config.image_size, config.arguments)
    load_weights(net, read_weights(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE, strict=True)
    return ImageClassifier(net, config).eval()


def read_config(folder: Path) -> ImageConfig:
    try:
        return ImageConfig(**json.loads((folder / CONFIG_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"'{folder / CONFIG_FILE}' is not a transferkit image model config ({e}); re-save the model") from None


def build_network(architecture: str, num_classes: int, image_size: int, arguments: dict | None = None) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture '{architecture}'; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](num_classes, image_size, **(arguments or {}))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file loaded without running pickled code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many types; all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read weights file '{path}' ({first}); pass a .safetensors or a torch state-dict file") from None
    for key in ("state_dict", "model"):  # training checkpoints often wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"weights file '{path}' holds no state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool = False) -> None:
    """Load `state` into `net`; unless strict, head tensors of another size stay freshly initialised."""
    own = net.state_dict()
    head = lambda key: any(key.startswith(m + ".") for m in net.head_modules)  # noqa: E731
    if not strict:
        state = {k: v for k, v in state.items() if not (head(k) and k in own and own[k].shape != v.shape)}
    missing = [k for k in own if k not in state and not (head(k) and not strict)]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}" for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong)) if keys)
        raise UserError(f"weights file '{path}' does not fit the architecture ({detail}); check model.architecture")
    net.load_state_dict(state, strict=False)
