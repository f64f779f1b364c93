"""NODE21 JSON / metadata.csv I/O, the FROC plot and ``cxr-nodule-aug eval`` end to end."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("monai")
pytest.importorskip("matplotlib")

from cxr_nodule_aug.eval import (  # noqa: E402
    evaluate_detections,
    node21_json_from_predictions,
    plot_froc,
    predictions_from_node21_json,
    read_node21_metadata,
    read_node21_predictions,
    write_node21_predictions,
)
from cxr_nodule_aug.cli import main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def P(boxes, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32)}


# The hand-computed case A of test_eval_detection.py, keyed by NODE21-style file names.
# n0 has a nodule at x=0,y=0,w=10,h=10; n1 two (G1, G2); n2, n3 none.
PREDS_A = {
    "n0.mha": P([[0, 0, 10, 10], [1, 1, 11, 11]], [0.875, 0.5625]),
    "n1.mha": P([[20, 20, 30, 30], [200, 200, 210, 210]], [0.5, 0.625]),
    "n2.mha": P([[220, 200, 230, 210]], [0.75]),
    "n3.mha": P([], []),
}
METADATA_A = (
    "img_name,x,y,width,height,label\n"
    "n0.mha,0,0,10,10,1\n"
    "n1.mha,20,20,10,10,1\n"
    "n1.mha,50,50,10,10,1\n"
    "n2.mha,0,0,0,0,0\n"
    "n3.mha,0,0,0,0,0\n"
)


def test_json_round_trip_with_spacing(tmp_path):
    path = tmp_path / "nodules.json"
    write_node21_predictions(PREDS_A, path, pixel_spacing_mm=(0.5, 0.25))
    data = json.loads(path.read_text())
    assert data["type"] == "Multiple 2D bounding boxes" and data["version"] == {"major": 1, "minor": 0}
    assert data["image_names"] == list(PREDS_A)
    first = data["boxes"][0]
    # Corners in millimetres (x * 0.5, y * 0.25), slice 0, NODE21 baseline order.
    assert first["corners"] == [[5.0, 2.5, 0], [0.0, 2.5, 0], [0.0, 0.0, 0], [5.0, 0.0, 0]]
    assert first["probability"] == 0.875
    assert [b["corners"][0][2] for b in data["boxes"]] == [0, 0, 1, 1, 2]
    back = read_node21_predictions(path, pixel_spacing_mm=(0.5, 0.25))
    assert list(back) == list(PREDS_A)
    for name, pred in PREDS_A.items():
        torch.testing.assert_close(back[name]["boxes"], pred["boxes"])
        torch.testing.assert_close(back[name]["scores"], pred["scores"])
        assert back[name]["labels"].tolist() == [1] * len(pred["scores"])


def test_json_without_names_uses_slices_or_given_names():
    data = node21_json_from_predictions(list(PREDS_A.values()))
    assert "image_names" not in data
    # Without names: slice numbers; the empty last image is only there when num_images says so.
    assert list(predictions_from_node21_json(data)) == ["0", "1", "2"]
    assert list(predictions_from_node21_json(data, num_images=4)) == ["0", "1", "2", "3"]
    named = predictions_from_node21_json(data, ["a", "b", "c", "d"])
    assert named["d"]["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match=r"box on slice 2 but only 2 images"):
        predictions_from_node21_json(data, ["a", "b"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "Multiple points", "boxes": []}, r"expected 'Multiple 2D bounding boxes'"),
        ({"points": []}, r"'boxes' list"),
        ({"boxes": [{"corners": [[0, 0, 0], [1, 1, 0]]}]}, r"boxes\[0\] has no 'probability'"),
        ({"boxes": [{"probability": 0.5}]}, r"boxes\[0\] must be an object with 'corners'"),
        ({"boxes": [{"corners": [[0, 0, 0], [1, 1, 1]], "probability": 0.5}]}, r"one non-negative slice"),
        ({"boxes": [{"corners": [[0], [1]], "probability": 0.5}]}, r"\[x, y, slice\]"),
        ({"boxes": [{"corners": [[0, 0, 0], [1, 1, 0]], "probability": 2.0}]}, r"'probability'\] must be in \[0, 1\]"),
    ],
)
def test_bad_json(data, message):
    with pytest.raises(ValueError, match=message):
        predictions_from_node21_json(data)


def test_write_rejects_bad_predictions():
    with pytest.raises(ValueError, match=r"predictions\[0\]\['boxes'\] must have shape"):
        node21_json_from_predictions([{"boxes": torch.zeros(1, 3), "scores": torch.zeros(1)}])
    with pytest.raises(ValueError, match=r"predictions\['x'\]\['scores'\] must be probabilities"):
        node21_json_from_predictions({"x": P([[0, 0, 1, 1]], [1.5])})


def test_read_metadata(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_text(METADATA_A)
    gt = read_node21_metadata(path)
    assert list(gt) == ["n0.mha", "n1.mha", "n2.mha", "n3.mha"]
    assert gt["n1.mha"]["boxes"].tolist() == [[20, 20, 30, 30], [50, 50, 60, 60]]
    assert gt["n2.mha"]["boxes"].shape == (0, 4)
    bad = tmp_path / "bad.csv"
    bad.write_text("img_name,x,y,w,h,label\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['width', 'height'\]"):
        read_node21_metadata(bad)


def test_metadata_with_index_column(tmp_path):
    """An extra leading index column, as pandas writes it, is ignored."""
    path = tmp_path / "metadata.csv"
    path.write_text(",img_name,x,y,width,height,label\n0,a.mha,1,2,3,4,1\n1,b.mha,0,0,0,0,0\n")
    gt = read_node21_metadata(path)
    assert gt["a.mha"]["boxes"].tolist() == [[1, 2, 4, 6]] and gt["b.mha"]["boxes"].shape == (0, 4)


@pytest.mark.parametrize("mode", ["monai", "all-thresholds"])
def test_plot_froc_writes_png(tmp_path, mode):
    gt = {k: {"boxes": v} for k, v in zip(PREDS_A, [
        torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[20.0, 20, 30, 30], [50, 50, 60, 60]]),
        torch.zeros(0, 4), torch.zeros(0, 4)])}
    metrics = evaluate_detections(PREDS_A, gt, mode=mode)
    plot_froc(metrics, tmp_path / "froc.png")
    assert (tmp_path / "froc.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(("mode", "with_names"), [("monai", True), ("all-thresholds", False)])
def test_cli_end_to_end(tmp_path, capsys, mode, with_names):
    preds_path, gt_path, out = tmp_path / "nodules.json", tmp_path / "metadata.csv", tmp_path / "out"
    # Without "image_names" the CLI maps slices to the metadata names sorted (n0..n3 here).
    write_node21_predictions(PREDS_A, preds_path, include_image_names=with_names)
    gt_path.write_text(METADATA_A)
    rc = main(["eval", "--predictions", str(preds_path), "--ground-truth", str(gt_path), "--mode", mode,
               "--bootstrap", "20", "--seed", "3", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "NODE21 score:         0.6458" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    # Hand-computed in test_eval_detection.case_a: AUC 3/4, sens@0.25 1/3 in both modes.
    assert metrics["mode"] == mode
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["sensitivity_at_target_fp"] == pytest.approx(1 / 3)
    assert metrics["node21_score"] == pytest.approx(0.75 * 0.75 + 0.25 / 3)
    assert metrics["bootstrap_replicates"] == 20 and metrics["bootstrap_seed"] == 3
    assert metrics["froc_thresholds"][0] == "inf"
    assert (out / "froc.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_errors(tmp_path, capsys):
    preds_path, gt_path = tmp_path / "nodules.json", tmp_path / "metadata.csv"
    gt_path.write_text(METADATA_A)
    write_node21_predictions({"n0.mha": PREDS_A["n0.mha"], "zz.mha": P([], [])}, preds_path)
    rc = main(["eval", "--predictions", str(preds_path), "--ground-truth", str(gt_path), "--out", str(tmp_path / "o")])
    assert rc == 1  # the files do not agree: a runtime failure
    assert "predictions has no entry for image" in capsys.readouterr().err
    rc = main(["eval", "--predictions", str(tmp_path / "missing.json"), "--ground-truth", str(gt_path)])
    assert rc == 2 and "missing.json" in capsys.readouterr().err  # no such file: a usage error


def test_cli_help_lists_eval(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "eval" in capsys.readouterr().out
