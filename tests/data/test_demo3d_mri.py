"""dataset=demo3d_mri (issue 27): a built-in protocol close to real multi-class 3-D MRI -- few training
volumes, seven small low-contrast structures, MRI-like intensities. One test per promise."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from uaseg.data.datasets.demo3d_mri import Demo3DMRIDataModule
from uaseg.data.datasets.synth import HEART_CLASSES
from uaseg.data.datasets.synth_mri import heart_mri_volume

BLOOD = (1, 2, 3, 4, 6, 7)  # LV, RV, LA, RA, AO, PA
MYO = 5


@pytest.fixture(scope="module")
def cases():
    """The 8 cases of the default config (size 48)."""
    return [heart_mri_volume(0, i, 48) for i in range(8)]


def _cnr(a: np.ndarray, b: np.ndarray) -> float:
    """Contrast-to-noise ratio of two regions: |mean difference| over their pooled std."""
    return float(abs(a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2))


def test_deterministic_and_mri_like_values():
    img, lab = heart_mri_volume(2, 5, 32)
    img2, lab2 = heart_mri_volume(2, 5, 32)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(lab, lab2)
    assert not np.array_equal(img, heart_mri_volume(2, 6, 32)[0])
    assert img.dtype == np.float32 and lab.dtype == np.uint8 and img.shape == lab.shape == (32, 32, 32)
    assert img.min() >= 0  # magnitude images (Rician noise): no negative signal, no HU


def test_seven_small_structures_in_every_case(cases):
    for _, lab in cases:
        assert set(np.unique(lab)) == set(range(len(HEART_CLASSES) + 1)) and len(HEART_CLASSES) == 7
        fractions = [(lab == c).mean() for c in range(1, 8)]
        assert max(fractions) < 0.03 and sum(fractions) < 0.08  # each under 3 % of the volume


def test_low_contrast(cases):
    """The blood pools differ little in signal (mean pairwise contrast-to-noise under 1.2 over the cases;
    CT's demo3d has fixed offsets between cavities), and the myocardium barely differs from the tissue
    around it (contrast-to-noise under 1.2 in every case): shape and position must tell them apart."""
    blood = [np.mean([_cnr(img[lab == a], img[lab == b]) for a, b in itertools.combinations(BLOOD, 2)])
             for img, lab in cases]
    assert np.mean(blood) < 1.2, blood
    for img, lab in cases:
        ring = ndi.binary_dilation(lab == MYO, iterations=3) & (lab == 0)
        assert _cnr(img[lab == MYO], img[ring]) < 1.2
    # no fixed intensity scale: the blood signal differs between cases by more than 20 %
    tops = [np.percentile(img, 99) for img, _ in cases]
    assert max(tops) > 1.2 * min(tops)


def test_few_training_volumes_per_fold(tmp_path):
    """The config's split: 8 cases in 2 folds, each training on 3 volumes, validating on 1, testing on 4."""
    from conftest import compose_cfg

    cfg = compose_cfg(["dataset=demo3d_mri", "dataset.image_size=32", "dataset.patch_size=[24,24,24]"],
                      tmp_path / "run", tmp_path / "cache")
    dm = Demo3DMRIDataModule(**{k: v for k, v in cfg.dataset.items() if k not in ("_target_", "meta")})
    for fold in (0, 1):
        dm.fold, dm.splits = fold, None
        dm.setup()
        assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [3, 1, 4]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 24, 24, 24) and batch["label"].shape == (4, 1, 24, 24, 24)
    val = next(iter(dm.val_dataloader()))["image"]  # each volume scaled by its own percentiles to [0, 1]
    assert val.shape == (1, 1, 32, 32, 32) and float(val.min()) == 0 and float(val.max()) == 1
    assert dm.num_classes == 8 and dm.case_dir.name.startswith("demo3d_mri-")
