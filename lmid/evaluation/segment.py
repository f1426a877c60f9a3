"""The target-only segmenter: K-Means on target-modality intensities inside the brain mask.

The paper's segmentation backend is "K-Means trained only on the target modality". It does not say
how many clusters, which voxels, or how clusters become tissue labels; our choices:

* **Voxels**: intensities of the TARGET training slices inside their brain masks (background
  excluded, so K-Means spends no cluster on it); at most ``segment.max_voxels`` of them, drawn
  without replacement with a seeded generator.
* **Clusters**: ``segment.n_clusters`` (K) centroids from scikit-learn's ``KMeans`` (k-means++,
  10 restarts, ``random_state`` from ``params.seed``).
* **Mapping to tissues**: the tissues are ordered by their intensity in the target modality,
  ``segment.tissue_order`` (T1: CSF < GM < WM). With K = 3 the sorted centroids map to the
  tissues in that order. With K != 3 a second 3-cluster fit on the same voxels gives one
  reference intensity per tissue (sorted likewise), and each of the K clusters takes the tissue
  whose reference intensity is nearest to its centroid ("nearest of the 3 tissue groups").
* **Applying**: every pixel inside the given brain mask gets the label of its nearest centroid
  (ties go to the lower cluster index); outside the mask is background (0). The same frozen
  segmenter is applied to every translation and to the real target slice, always with the mask of
  the TEST slice (a translation has no mask of its own).

The fitted segmenter is stored as plain JSON (centroids and the cluster-to-label mapping), never
pickled, and :meth:`KMeansSegmenter.predict` needs nothing but numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmid.errors import InputFileError
from lmid.io import read_json, write_json

#: Label values of the prepared-slice format (lmid.data.slices.LABELS).
TISSUE_LABELS = {"CSF": 1, "GM": 2, "WM": 3}
FORMAT = "lmid-kmeans-segmenter/1"


@dataclass(frozen=True)
class KMeansSegmenter:
    """A frozen 1-D K-Means segmenter.

    ``centroids[k]`` is the intensity of cluster k (in [0, 1]); ``mapping[k]`` its tissue label
    (1 CSF, 2 GM, 3 WM).
    """

    centroids: tuple[float, ...]
    mapping: tuple[int, ...]
    tissue_order: tuple[str, str, str] = ("CSF", "GM", "WM")
    reference_centroids: tuple[float, ...] = ()
    n_voxels: int = 0
    seed: int = 0
    inertia: float = float("nan")

    def predict(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Labels (uint8, same shape as ``image``): nearest-centroid tissue inside ``mask``, 0 outside."""
        image = np.asarray(image, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if image.shape != mask.shape:
            raise ValueError(f"image shape {image.shape} and mask shape {mask.shape} differ")
        centroids = np.asarray(self.centroids, dtype=np.float64)
        lut = np.asarray(self.mapping, dtype=np.uint8)
        labels = np.zeros(image.shape, dtype=np.uint8)
        values = image[mask]
        if values.size:
            nearest = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
            labels[mask] = lut[nearest]
        return labels

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "centroids": [float(c) for c in self.centroids],
            "mapping": [int(m) for m in self.mapping],
            "mapping_names": [_name(m) for m in self.mapping],
            "tissue_order": list(self.tissue_order),
            "reference_centroids": [float(c) for c in self.reference_centroids],
            "n_clusters": len(self.centroids),
            "n_voxels": int(self.n_voxels),
            "seed": int(self.seed),
            "inertia": float(self.inertia),
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "KMeansSegmenter":
        d = read_json(path)
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputFileError(path, f"not a segmenter written by 'lmid fit-segmenter' (format must be {FORMAT!r})")
        try:
            centroids = tuple(float(c) for c in d["centroids"])
            mapping = tuple(int(m) for m in d["mapping"])
            order = tuple(str(t) for t in d.get("tissue_order", ("CSF", "GM", "WM")))
        except (KeyError, TypeError, ValueError) as err:
            raise InputFileError(path, f"malformed segmenter ({type(err).__name__}: {err})") from None
        if not centroids or len(centroids) != len(mapping):
            raise InputFileError(path, f"{len(centroids)} centroids but {len(mapping)} mapped labels")
        if not all(np.isfinite(centroids)):
            raise InputFileError(path, "centroids contain NaN/Inf")
        if any(m not in TISSUE_LABELS.values() for m in mapping):
            raise InputFileError(path, f"mapping must hold labels 1 (CSF), 2 (GM), 3 (WM); got {list(mapping)}")
        return cls(
            centroids=centroids,
            mapping=mapping,
            tissue_order=order,  # type: ignore[arg-type]
            reference_centroids=tuple(float(c) for c in d.get("reference_centroids", ())),
            n_voxels=int(d.get("n_voxels", 0)),
            seed=int(d.get("seed", 0)),
            inertia=float(d.get("inertia", float("nan"))),
        )


def _name(label: int) -> str:
    return {v: k for k, v in TISSUE_LABELS.items()}[int(label)]


def _kmeans_1d(values: np.ndarray, k: int, seed: int):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(values[:, None])
    return km.cluster_centers_[:, 0].astype(np.float64), float(km.inertia_)


def fit_segmenter(
    target: np.ndarray,
    mask: np.ndarray,
    n_clusters: int = 3,
    max_voxels: int = 200_000,
    seed: int = 0,
    tissue_order=("CSF", "GM", "WM"),
) -> KMeansSegmenter:
    """Fit on the target training slices ``target`` (N, H, W) inside ``mask`` (N, H, W).

    Clusters are returned sorted by centroid intensity, so cluster 0 is the darkest.
    """
    values = np.asarray(target, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    values = values[np.isfinite(values)]
    if values.size < max(n_clusters, 3):
        raise ValueError(f"only {values.size} brain voxels to fit {n_clusters} clusters (are the masks empty?)")
    rng = np.random.default_rng(seed)
    if max_voxels and values.size > max_voxels:
        values = values[np.sort(rng.choice(values.size, size=max_voxels, replace=False))]
    if np.unique(values).size < max(n_clusters, 3):
        raise ValueError(f"brain voxels hold fewer than {max(n_clusters, 3)} distinct intensities")
    centroids, inertia = _kmeans_1d(values, n_clusters, seed)
    centroids = np.sort(centroids)
    order_labels = np.array([TISSUE_LABELS[t] for t in tissue_order])
    if n_clusters == 3:
        reference = centroids.copy()
        mapping = order_labels.copy()
    else:
        reference = np.sort(_kmeans_1d(values, 3, seed)[0])
        mapping = order_labels[np.argmin(np.abs(centroids[:, None] - reference[None, :]), axis=1)]
    return KMeansSegmenter(
        centroids=tuple(float(c) for c in centroids),
        mapping=tuple(int(m) for m in mapping),
        tissue_order=tuple(tissue_order),
        reference_centroids=tuple(float(c) for c in reference),
        n_voxels=int(values.size),
        seed=int(seed),
        inertia=inertia,
    )


#: Offset added to ``params.seed`` for the segmenter's generators (keeps streams apart).
SEED_OFFSET = 501


def fit_target_segmenter(params, target: np.ndarray, mask: np.ndarray) -> KMeansSegmenter:
    """The run's segmenter from target training slices and their brain masks, as ``params`` say
    (``segment`` and the seed): what ``lmid fit-segmenter`` writes, and what the ``synthseg``
    reference re-fits for its training labels, so the two are the same segmenter."""
    seg = params.segment
    return fit_segmenter(
        target,
        mask,
        n_clusters=seg.n_clusters,
        max_voxels=seg.max_voxels,
        seed=params.seed + SEED_OFFSET,
        tissue_order=seg.tissue_order,
    )


def fit_segmenter_cmd(params, train_path: str | Path, out_path: str | Path) -> KMeansSegmenter:
    """``lmid fit-segmenter``: fit on the TARGET training slices only and write the JSON."""
    from lmid.data.slices import load_slices

    train = load_slices(train_path)
    try:
        model = fit_target_segmenter(params, train.target, train.mask)
    except ValueError as err:
        raise InputFileError(train_path, str(err)) from None
    model.save(out_path)
    return model
