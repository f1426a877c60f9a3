"""The target-only K-Means segmenter: recovers tissue labels, stored as JSON, identical after a round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmid.cli import main as lmid_main
from lmid.errors import InputFileError
from lmid.evaluation.segment import KMeansSegmenter, fit_segmenter

T1 = {1: 0.25, 2: 0.5, 3: 0.75}  # CSF < GM < WM on T1


def three_class(n=6, size=24, seed=0, lut=T1, noise=0.03):
    rng = np.random.default_rng(seed)
    label = rng.integers(1, 4, size=(n, size, size)).astype(np.uint8)
    label[:, :3] = 0  # background band outside the brain
    mask = label > 0
    img = np.zeros(label.shape, np.float32)
    for k, v in lut.items():
        img[label == k] = v
    img = np.clip(img + rng.normal(0, noise, img.shape) * mask, 0, 1).astype(np.float32)
    return img, mask, label


def test_fit_recovers_mapping_and_labels():
    img, mask, label = three_class()
    seg = fit_segmenter(img, mask, n_clusters=3, max_voxels=0, seed=1)
    assert seg.mapping == (1, 2, 3)
    assert np.allclose(seg.centroids, [0.25, 0.5, 0.75], atol=0.01)
    pred = np.stack([seg.predict(x, m) for x, m in zip(img, mask)])
    assert np.all(pred[~mask] == 0)
    assert (pred[mask] == label[mask]).mean() > 0.99


def test_tissue_order_for_a_t2_target():
    """On T2 CSF is brightest: the order parameter reverses the mapping."""
    img, mask, label = three_class(lut={1: 0.9, 2: 0.55, 3: 0.35})
    seg = fit_segmenter(img, mask, n_clusters=3, seed=1, tissue_order=("WM", "GM", "CSF"))
    assert seg.mapping == (3, 2, 1)
    pred = seg.predict(img[0], mask[0])
    assert (pred[mask[0]] == label[0][mask[0]]).mean() > 0.99


def test_more_clusters_map_to_nearest_tissue_group():
    img, mask, label = three_class(noise=0.05)
    seg = fit_segmenter(img, mask, n_clusters=6, seed=1)
    assert len(seg.centroids) == 6 and list(seg.centroids) == sorted(seg.centroids)
    assert set(seg.mapping) == {1, 2, 3} and list(seg.mapping) == sorted(seg.mapping)
    assert len(seg.reference_centroids) == 3
    pred = np.stack([seg.predict(x, m) for x, m in zip(img, mask)])
    assert (pred[mask] == label[mask]).mean() > 0.98


def test_subsampling_is_seeded():
    img, mask, _ = three_class()
    a = fit_segmenter(img, mask, max_voxels=500, seed=7)
    b = fit_segmenter(img, mask, max_voxels=500, seed=7)
    assert a == b and a.n_voxels == 500


def test_json_round_trip_gives_identical_labels(tmp_path):
    img, mask, _ = three_class(seed=2)
    seg = fit_segmenter(img, mask, n_clusters=4, seed=3)
    path = tmp_path / "kmeans.json"
    seg.save(path)
    data = json.loads(path.read_text())  # plain JSON, no pickle anywhere
    assert data["format"] == "lmid-kmeans-segmenter/1" and len(data["centroids"]) == 4
    back = KMeansSegmenter.load(path)
    assert back.centroids == seg.centroids and back.mapping == seg.mapping
    test_img, test_mask, _ = three_class(seed=9)
    for x, m in zip(test_img, test_mask):
        assert np.array_equal(seg.predict(x, m), back.predict(x, m))


def test_malformed_segmenter_is_a_clear_error(tmp_path):
    path = tmp_path / "kmeans.json"
    path.write_text(json.dumps({"format": "lmid-kmeans-segmenter/1", "centroids": [0.1, 0.5], "mapping": [1]}))
    with pytest.raises(InputFileError, match="2 centroids but 1 mapped labels"):
        KMeansSegmenter.load(path)
    path.write_text("{}")
    with pytest.raises(InputFileError, match="not a segmenter"):
        KMeansSegmenter.load(path)


def test_cli_fits_on_target_slices_only(tmp_path):
    from lmid.data.slices import SliceSet

    img, mask, label = three_class()
    # The source holds other intensities: a fit on it would give other centroids.
    split = SliceSet(
        source=np.clip(1.0 - img, 0, 1) * mask,
        target=img,
        mask=mask,
        label=label,
        subject=np.array([f"S{i}" for i in range(len(img))]),
        slice_index=np.arange(len(img)),
        has_label=True,
    )
    split.save(tmp_path / "train.npz")
    params = tmp_path / "params.yaml"
    params.write_text("segment: {n_clusters: 3, max_voxels: 2000}\n")
    out = tmp_path / "models" / "kmeans.json"
    assert (
        lmid_main(["fit-segmenter", "--params", str(params), "--train", str(tmp_path / "train.npz"), "--out", str(out)])
        == 0
    )
    seg = KMeansSegmenter.load(out)
    assert np.allclose(seg.centroids, [0.25, 0.5, 0.75], atol=0.02) and seg.mapping == (1, 2, 3)
    assert (
        lmid_main(
            ["fit-segmenter", "--params", str(params), "--train", str(tmp_path / "missing.npz"), "--out", str(out)]
        )
        == 2
    )
