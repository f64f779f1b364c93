"""Image-quality metrics on hand-checkable cases, the FID feature module, the quick benchmark."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxr_nodule_aug.eval.quality import FID_LABEL, METRIC_KEYS, PSNR_CAP_DB, Lite0PooledFeatures, fid, hole_boxes, inception_weights_path, quality_metrics, summarize

ROOT = Path(__file__).resolve().parents[1]


def hole(b=2, p=32, box=(10, 12, 20, 18)):
    m = torch.zeros(b, 1, p, p)
    m[..., box[0] : box[2], box[1] : box[3]] = 1
    return m


def test_identical_patches():
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    s = summarize(quality_metrics(x, x, hole()))
    assert set(s) == set(METRIC_KEYS)
    assert s["full_mae"] == s["masked_mae"] == 0.0
    assert s["full_psnr"] == s["masked_psnr"] == PSNR_CAP_DB  # inf, capped
    assert s["full_ssim"] == pytest.approx(1.0) and s["masked_ssim"] == pytest.approx(1.0)


def test_constant_error_inside_the_hole():
    gt = torch.full((2, 1, 32, 32), 0.5)
    mask = hole()  # 10 x 6 = 60 px hole, grown to an 11 x 11 box for the masked region
    pred = torch.full_like(gt, 0.6)
    per = quality_metrics(pred, gt, mask)  # composited: the error is only inside the hole
    assert per["full_mae"][0].item() == pytest.approx(0.1 * 60 / 1024, abs=1e-6)
    assert per["masked_mae"][0].item() == pytest.approx(0.1 * 60 / 121, abs=1e-6)
    assert per["full_psnr"][0].item() == pytest.approx(10 * math.log10(1024 / (0.01 * 60)), abs=1e-3)
    raw = quality_metrics(pred, gt, mask, composite=False)
    assert raw["full_mae"][0].item() == pytest.approx(0.1, abs=1e-6) and raw["full_psnr"][0].item() == pytest.approx(20.0, abs=1e-3)
    assert (per["masked_ssim"] < 1).all()


def test_hole_boxes_grow_small_holes_and_clip():
    m = torch.zeros(2, 1, 32, 32)
    m[0, 0, 0:3, 0:2] = 1  # at the corner: grown to 11 x 11, clipped inside the patch
    m[1, 0, 5:25, 6:26] = 1  # large: unchanged
    assert hole_boxes(m) == [(0, 0, 11, 11), (5, 6, 25, 26)]
    with pytest.raises(ValueError, match="empty"):
        hole_boxes(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask must match"):
        quality_metrics(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 16, 16))


def test_fid_feature_module_and_label():
    features = Lite0PooledFeatures()
    assert features.num_features == 1280
    out = features(torch.rand(3, 1, 32, 32))
    assert out.shape == (3, 1280) and out.dtype == torch.float32
    assert features(torch.rand(2, 3, 40, 40)).shape == (2, 1280)
    assert features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).shape == (1, 1280)
    assert "not Inception" in FID_LABEL


def test_fid_with_a_small_custom_feature_module():
    class Moments(torch.nn.Module):
        num_features = 2

        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1).double()

    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 1, 16, 16, generator=g)
    assert fid(a, a, features=Moments()) == pytest.approx(0.0, abs=1e-6)
    # a shift by 0.25 moves the mean feature by (0.25, 0) and leaves the covariance: FID = 0.0625
    assert fid(a * 0.5, a * 0.5 + 0.25, features=Moments()) == pytest.approx(0.0625, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        fid(a[:1], a, features=Moments())


def test_inception_path_errors_clearly_without_local_weights(tmp_path):
    with pytest.raises((ImportError, FileNotFoundError), match="inception|torch-fidelity"):
        inception_weights_path(tmp_path / "missing.pth")


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--quick-steps", "2", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    result = json.loads((tmp_path / "quality.json").read_text())
    assert result["preset"] == "quick" and result["fid"] == FID_LABEL and "--quick" in result["command"]
    labels = [r["label"] for r in result["rows"]]
    assert len(labels) == 6 and labels[-1].startswith("Paste-and-blend") and "Partial-conv" in labels[-2]
    for r in result["rows"]:
        assert all(math.isfinite(r[k]) for k in (*METRIC_KEYS, "fid_lite0"))
    assert "Quick preset" in (tmp_path / "quality.md").read_text()
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--out-dir", str(ROOT / "benchmarks" / "results")], check=True, capture_output=True, timeout=60)
