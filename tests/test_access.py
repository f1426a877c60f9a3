"""What each method may see: every method's training data, built through its own declaration.

The synthetic training split makes leaks visible: every slice is distinct, the source slice is
1 − its target, and every subject has its own id. Each method's ``training_data`` must then hold
exactly what its ``access`` allows (docs/method.md §2 and §5):

* lmidiffusion, sdedit, stylegan2, histmatch, synthseg: target slices only, nothing equal to a
  source slice (synthseg's labels are the K-Means segmentation of those target slices, made in its
  training, never the ground truth);
* cyclegan: the targets plus round(0.11·N) source slices of training subjects, not paired;
* cdm (supervised upper bound): source and target, slice for slice aligned;
* identity: nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lmid.config import METHOD_NAMES, Params
from lmid.data.slices import SliceSet
from lmid.methods import METHODS, Access, get_method

EXPECTED = {
    "lmidiffusion": Access.TARGET_ONLY,
    "sdedit": Access.TARGET_ONLY,
    "stylegan2": Access.TARGET_ONLY,
    "histmatch": Access.TARGET_HISTOGRAM,
    "cyclegan": Access.TARGET_AND_SOURCE_FRACTION,
    "cdm": Access.PAIRED,
    "identity": Access.NONE,
    "synthseg": Access.TARGET_ONLY,
}
TARGET_ONLY = ("lmidiffusion", "sdedit", "stylegan2", "histmatch", "synthseg")
N, SIZE, SUBJECTS = 36, 12, 6


@pytest.fixture(scope="module")
def train() -> SliceSet:
    rng = np.random.default_rng(42)
    target = rng.uniform(0.1, 0.9, size=(N, SIZE, SIZE)).astype(np.float32)
    mask = np.zeros(target.shape, bool)
    mask[:, 2:-2, 2:-2] = True
    return SliceSet(
        source=(1.0 - target).astype(np.float32),
        target=target,
        mask=mask,
        label=np.zeros(target.shape, np.uint8),
        subject=np.array([f"TRAIN{i % SUBJECTS:03d}" for i in range(N)]),
        slice_index=np.arange(N) // SUBJECTS,
    )


def _method(name: str):
    return get_method(name)


def _source_index(train: SliceSet, image: np.ndarray) -> int | None:
    """Index of the training source slice equal to ``image`` (None when it matches none)."""
    hits = [j for j in range(len(train)) if np.allclose(image, train.source[j], atol=1e-6)]
    return hits[0] if hits else None


def _arrays_without_source(train: SliceSet, data, allowed: tuple[str, ...] = ()) -> None:
    """No image-shaped array in ``data`` except the fields in ``allowed`` holds any source slice."""
    for f in dataclasses.fields(data):
        value = getattr(data, f.name)
        if f.name in allowed or not isinstance(value, np.ndarray) or value.ndim != 3:
            continue
        for k, image in enumerate(value):
            j = _source_index(train, image.astype(np.float32))
            assert j is None, f"{f.name}[{k}] equals source slice {j}"


def test_every_method_is_covered():
    assert set(EXPECTED) == set(METHOD_NAMES) == set(METHODS)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_declared_access(name):
    assert _method(name).access is EXPECTED[name]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_registry_module_and_class_agree(name):
    """lmid/registry.py names the module; lmid.methods.method_class imports the class from it."""
    from lmid.methods import method_class

    cls = method_class(name)
    assert cls.name == name and cls.__module__ == METHODS[name].module


@pytest.mark.parametrize("name", TARGET_ONLY)
def test_target_only_methods_see_no_source(name, train):
    data = _method(name).training_data(Params(), train)
    assert data.source is None and not data.paired
    assert np.array_equal(data.target, train.target)
    assert data.target_mask is not None and np.array_equal(data.target_mask, train.mask)
    assert len(data.source_subjects) == 0
    assert set(data.target_subjects) <= set(train.subject)
    _arrays_without_source(train, data)


def test_synthseg_labels_come_from_the_target_slices_only(train):
    """Its training labels are K-Means of the target slices in their masks: they change when the
    targets change and not when the sources or the ground-truth labels do."""
    from lmid.methods.synthseg import training_labels

    data = _method("synthseg").training_data(Params(), train)
    _, labels = training_labels(Params(), data.target, data.target_mask)
    assert labels.shape == train.target.shape and labels.dtype == np.uint8
    assert not labels[~train.mask].any() and set(np.unique(labels[train.mask])) == {1, 2, 3}
    other = dataclasses.replace(
        train, source=np.zeros_like(train.source), label=np.full(train.label.shape, 2, np.uint8)
    )
    again = _method("synthseg").training_data(Params(), other)
    np.testing.assert_array_equal(training_labels(Params(), again.target, again.target_mask)[1], labels)
    brighter = dataclasses.replace(train, target=np.sqrt(train.target))
    changed = _method("synthseg").training_data(Params(), brighter)
    assert not np.array_equal(training_labels(Params(), changed.target, changed.target_mask)[1], labels)


def test_cyclegan_sees_targets_and_an_unpaired_eleventh_of_the_sources(train):
    params = Params()
    assert params.cyclegan.source_fraction == pytest.approx(0.11)
    data = _method("cyclegan").training_data(params, train)
    assert not data.paired
    assert np.array_equal(data.target, train.target)
    _arrays_without_source(train, data, allowed=("source",))
    k = len(data.source)
    assert k == round(0.11 * N)
    index = [_source_index(train, s) for s in data.source]
    assert None not in index, "a 'source' slice that is not a training source slice"
    assert len(set(index)) == k, "a source slice given twice"
    assert set(train.subject[index]) == set(data.source_subjects) <= set(train.subject)
    # Unpaired: source slice i is not the partner of target slice i.
    assert index != list(range(k))


def test_cdm_sees_aligned_pairs(train):
    data = _method("cdm").training_data(Params(), train)
    assert data.paired
    assert np.array_equal(data.source, train.source) and np.array_equal(data.target, train.target)
    assert np.allclose(data.source + data.target, 1.0)  # slice i of one is the partner of slice i of the other
    assert set(data.source_subjects) == set(data.target_subjects) == set(train.subject)


def test_identity_sees_nothing(train):
    data = _method("identity").training_data(Params(), train)
    assert data.target is None and data.source is None and data.target_mask is None and not data.paired
    for f in dataclasses.fields(data):
        value = getattr(data, f.name)
        assert not isinstance(value, np.ndarray) or value.size == 0, f.name
