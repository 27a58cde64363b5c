"""Every check of the user's dataset files, in one place (used by the datamodules and
``scripts/check_dataset.py``).

Rule of the house: a problem with the user's files is an error that names the file -- never a silent
skip and never wrong numbers. Everything here raises :class:`~uaseg.errors.DatasetError`.

* :func:`natural_key` -- sort ``train_2`` before ``train_10``.
* :func:`check_nifti_pair` / :func:`check_image_pair` -- header-only checks of an image and its label
  (readable, dimensions, same grid: shape and spacing; an origin or direction that differs is a
  warning, :func:`check_same_geometry`), run on every case before training.
* :func:`check_channel_files` / :func:`check_file_channels` -- an nnU-Net case: one file per channel,
  or one RGB file for three channels.
* :class:`LoadImageNamedd` -- MONAI ``LoadImaged`` that names the unreadable file.
* :class:`CheckSameGeometryd` -- image and label must share spatial shape (and spacing, for 3-D); the
  label takes the image's affine.
* :class:`CheckChannelsd` -- an image must have the expected number of channels.
* :class:`CheckLabelValuesd` / :func:`check_label_values` -- label values must be exact integers from
  an allowed set (optionally fixing known typos like MM-WHS ``421`` -> ``420`` with a warning).
* :class:`CheckFinited` / :func:`nonfinite_problem` -- no NaN or infinite voxel in an image.
* :func:`check_foreground` / :func:`foreground_note` -- a warning naming each label without foreground
  (all background, or only the ignore label); an error when no training case has foreground.
* :data:`COLOUR_MODES` / :func:`check_image_mode` -- the Pillow modes a 2-D RGB dataset reads, the
  same for training and prediction.
"""

from uaseg.data.checks.files import (
    COLOUR_MODES,
    GRAY_MODES,
    MULTICHANNEL_MODES,
    check_channel_files,
    check_file_channels,
    check_foreground,
    foreground_note,
    check_image_mode,
    check_image_pair,
    check_label_values,
    check_multimodal_pair,
    check_nifti_pair,
    check_same_geometry,
    count_nonfinite,
    describe_values,
    expected_layout_error,
    geometry_difference,
    image_file_channels,
    natural_key,
    nonfinite_problem,
    source_name,
)
from uaseg.data.checks.transforms import (
    Binarized,
    CheckChannelsd,
    CheckFinited,
    CheckLabelValuesd,
    CheckSameGeometryd,
    LoadImageNamedd,
)
from uaseg.errors import DatasetError

__all__ = [
    "DatasetError", "COLOUR_MODES", "GRAY_MODES", "MULTICHANNEL_MODES", "check_channel_files", "check_file_channels",
    "check_foreground", "foreground_note", "geometry_difference", "image_file_channels", "check_image_mode",
    "check_image_pair", "check_label_values", "check_multimodal_pair", "check_nifti_pair", "check_same_geometry",
    "count_nonfinite", "describe_values", "expected_layout_error", "natural_key", "nonfinite_problem",
    "source_name", "Binarized", "CheckChannelsd", "CheckFinited", "CheckLabelValuesd", "CheckSameGeometryd",
    "LoadImageNamedd",
]
