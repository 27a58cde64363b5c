"""``uaseg export-demo <folder> --layout nnunet``: a built-in dataset as an nnU-Net v2 raw dataset folder,
so ``dataset=nnunet dataset.root=<folder>``, ``scripts/check_dataset.py --dataset nnunet`` and
``predict.py input=<folder>/imagesTs`` can be tried without a download::

    <folder>/dataset.json           channel_names, labels, numTraining, file_ending
    <folder>/imagesTr/<case>_0000   the training and validation cases of the chosen fold (+ labelsTr/<case>)
    <folder>/imagesTs/<case>_0000   its test cases (+ labelsTs/<case>, which nnU-Net and uaseg do not read)

``demo2d``: one RGB PNG per case (nnU-Net's convention for natural images: channels R, G, B in one
file); ``demo3d``: one NIfTI volume in HU (channel ``CT``, so the plan normalises it as CT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from uaseg.data.datasets.export_demo import RECORD, check_target, demo_datamodule, write_case
from uaseg.io import write_json


def export_nnunet(folder: str | Path, dataset: str = "demo2d", overrides: Sequence[str] = (),
                  cache_dir: str | Path | None = None, force: bool = False) -> list[Path]:
    """Write the dataset folder; returns the image files (imagesTr, then imagesTs). ``folder`` must be
    new, empty or an earlier export of the same cases, unless ``force`` (as :func:`export_demo`)."""
    folder = Path(folder)
    what = {"dataset": dataset, "layout": "nnunet",
            "overrides": sorted(o[len("dataset."):] if o.startswith("dataset.") else o for o in overrides)}
    check_target(folder, what, force)
    dm = demo_datamodule(dataset, overrides, cache_dir)
    dm.setup()
    ext = ".png" if dm.spatial_dims == 2 else ".nii.gz"
    written = []
    for part, splits in (("Tr", ("train", "val")), ("Ts", ("test",))):
        for case in (c for s in splits for c in dm.splits[s]):
            cid = case["case_id"]
            written.append(write_case(case, dm.spatial_dims, folder / f"images{part}" / f"{cid}_0000{ext}",
                                      folder / f"labels{part}" / f"{cid}{ext}"))
    channels = {"0": "R", "1": "G", "2": "B"} if dm.spatial_dims == 2 else {"0": "CT"}
    write_json(folder / "dataset.json", {
        "name": f"uaseg {dataset} demo", "channel_names": channels,
        "labels": {"background": 0, **{n: i for i, n in enumerate(dm.class_names, 1)}},
        "numTraining": len(dm.splits["train"]) + len(dm.splits["val"]), "file_ending": ext})
    files = [*written, *(folder.rglob("labels*/*")), folder / "dataset.json"]
    write_json(folder / RECORD, {**what, "files": sorted(str(f.relative_to(folder)) for f in files)})
    return written
