"""EfficientNet-Lite (Tan and Le 2019; the Lite variants: ReLU6, no squeeze-excitation) with timm's face.

A thin subclass of the `efficientnet_lite_pytorch` model: it adds `forward_features` and
`forward_head` and keeps the upstream parameter names, so the packaged
ImageNet weights, our saved weights and the upstream class all load each other's files.
"""

from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn


class EfficientNetLite(EfficientNet):
    head_modules = ("_fc",)
    # Only the 1x1 convolutions: peft's Conv2d LoRA copies the base layer's padding, and the
    # depthwise k x k convolutions pad outside the conv ("same" padding like TensorFlow).
    lora_targets = ("_expand_conv", "_project_conv", "_conv_head")
    # The TensorFlow Lite models were trained on (x - 127) / 128.
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    @classmethod
    def build(cls, num_classes: int, image_size: int, variant: str = "efficientnet-lite0") -> EfficientNetLite:
        # The static "same" padding is computed for image_size; it is the same for every
        # multiple of 32, so weights trained at 224 run unchanged at 128.
        net = cls.from_name(variant, num_classes=num_classes, image_size=image_size)
        _plain_pointwise_convs(net)
        return net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> globally pooled features (B, 1280)."""
        return self._avg_pooling(self.extract_features(x)).flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))



def _plain_pointwise_convs(net: nn.Module) -> None:
    """Swap the 1x1, stride-1 convolutions for plain nn.Conv2d (same parameters and names).

    They need no "same" padding, and peft builds LoRA adapters with `type(base_layer)`, which
    the upstream padded conv class cannot be called like.
    """
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            pointwise = isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and tuple(child.stride) == (1, 1)
            if pointwise and type(child) is not nn.Conv2d:
                plain = nn.Conv2d(child.in_channels, child.out_channels, 1, groups=child.groups, bias=child.bias is not None)
                setattr(parent, name, plain)
