"""Every file uaseg writes or whose header it reads goes through here (nnU-Net keeps its image I/O in
one package too): atomic writes, JSON without NaN, NIfTI on a reference header, 8/16-bit PNG, NPY/NPZ,
torch checkpoints.

Atomic: each writer writes ``.tmp-<pid>-<token>-<name>`` beside the target and renames it over the
target, so a reader (``resume=``, the report) never sees a cut-off file and a failed write leaves the
old file intact. The temporary keeps the target's suffixes (``nibabel`` and Pillow pick the format
from them) and is created like any file, so permissions follow the umask (0644 usually). A failed
write raises ``OSError`` naming the file and the reason (e.g. no space left on device).

Modules: :mod:`.atomic` (the writers), :mod:`.images` (PNG, NIfTI, overlays), :mod:`.checkpoints`
(is a file a complete checkpoint), :mod:`.headers` (input headers); everything is importable from here.
"""

from __future__ import annotations

from uaseg.io.atomic import (  # noqa: F401
    WriteError, atomic_path, json_safe, save_figure, save_npy, save_npz, save_torch, update_checkpoint, write_json,
    write_text,
)
from uaseg.io.checkpoints import check_checkpoint_file  # noqa: F401
from uaseg.io.headers import NiftiHeader, affine_problem, load_nifti, read_image_header, read_nifti_header  # noqa: F401
from uaseg.io.images import (  # noqa: F401
    class_colour, overlay_rgb, save_label_png, save_nifti, save_nifti_like, save_png, uncertainty_png16,
)
