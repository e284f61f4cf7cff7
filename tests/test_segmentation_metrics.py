import numpy as np
import pytest

from conftest import DATA
from medsynth.data.volumes import read_nifti
from medsynth.errors import MedsynthError
from medsynth.metrics.segmentation import BRATS_REGIONS, segmentation_scores


@pytest.fixture(scope="module")
def brats_labels():
    return read_nifti(DATA / "brats2013" / "train" / "brats_2013_pat0005_1" / "OTMultiClass.nii.gz").array.astype(int)


def test_identical_maps_are_perfect(brats_labels):
    s = segmentation_scores(brats_labels, brats_labels, regions=BRATS_REGIONS)
    assert set(s["classes"]) <= {"1", "2", "3", "4"} and s["classes"]
    for scores in [*s["classes"].values(), *s["regions"].values()]:
        assert scores["dice"] == pytest.approx(1.0) and scores["hd95"] == pytest.approx(0.0)


def test_shifted_map_distance_in_mm(brats_labels):
    shifted = np.roll(brats_labels, 3, axis=0)
    s = segmentation_scores(shifted, brats_labels, regions=BRATS_REGIONS)
    wt = s["regions"]["whole_tumour"]
    assert 0.5 < wt["dice"] < 1.0
    assert wt["hd95"] == pytest.approx(3.0, abs=0.5)  # a 3-voxel shift at 1 mm
    # a cube moved 3 voxels along an axis of 2 mm voxels: its two moved faces lie 6 mm from the originals
    cube = np.zeros((40, 40, 40), int)
    cube[10:30, 10:30, 10:30] = 1
    moved = np.roll(cube, 3, axis=0)
    assert segmentation_scores(moved, cube)["classes"]["1"]["hd95"] == pytest.approx(3.0)
    assert segmentation_scores(moved, cube, spacing=(2.0, 1.0, 1.0))["classes"]["1"]["hd95"] == pytest.approx(6.0)
    assert segmentation_scores(moved, cube, spacing=(1.0, 2.0, 2.0))["classes"]["1"]["hd95"] == pytest.approx(3.0)


def test_brats_regions_and_empty_structures():
    target = np.zeros((8, 8), int)
    target[1:3, 1:3] = 4  # enhancing
    target[4:6, 4:6] = 2  # edema
    pred = np.zeros_like(target)
    pred[1:3, 1:3] = 4
    s = segmentation_scores(pred, target, classes=[1, 2, 4], regions=BRATS_REGIONS)
    assert s["classes"]["1"] == {"dice": 1.0, "hd95": 0.0, "voxels_pred": 0, "voxels_target": 0}
    assert s["classes"]["2"]["dice"] == 0.0 and s["classes"]["2"]["hd95"] is None
    assert s["regions"]["enhancing_tumour"]["dice"] == pytest.approx(1.0)
    assert s["regions"]["tumour_core"]["dice"] == pytest.approx(1.0)
    assert s["regions"]["whole_tumour"]["dice"] == pytest.approx(2 * 4 / (4 + 8))
    pred[6:8, 0:2] = 3  # only the prediction has class 3: Dice 0 (MONAI's default would give NaN)
    s = segmentation_scores(pred, target, classes=[3])
    assert s["classes"]["3"]["dice"] == 0.0 and s["classes"]["3"]["hd95"] is None
    with pytest.raises(MedsynthError, match="differ"):
        segmentation_scores(pred, target[:4])


def test_foreground_threshold_against_a_direct_rule():
    import torch

    from medsynth.models.segmentation import foreground_classes

    probs = torch.tensor([[0.45, 0.3, 0.7, 0.2], [0.35, 0.6, 0.2, 0.1], [0.2, 0.1, 0.1, 0.7]])  # K=3 x 4 voxels
    assert foreground_classes(probs).tolist() == [0, 1, 0, 2]  # the argmax
    # foreground where 1 - p(background) > t: voxel 0 (0.55) passes 0.5, not 0.6
    assert foreground_classes(probs, 0.5).tolist() == [1, 1, 0, 2]
    assert foreground_classes(probs, 0.6).tolist() == [0, 1, 0, 2]
    assert foreground_classes(probs, 0.75).tolist() == [0, 0, 0, 2]
