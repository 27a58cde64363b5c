"""Whether a file is a complete ``torch.save`` archive, checked without unpickling anything."""

from __future__ import annotations

from pathlib import Path

from uaseg.errors import CheckpointError


def check_checkpoint_file(path: str | Path, what: str | None = None) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a complete ``torch.save`` archive.

    ``torch.save`` writes a zip archive; a truncated or overwritten file loses its central directory
    or fails a member's CRC. Checking that reads the file once, without unpickling anything, so a bad
    ``ckpt_path`` / ``resume`` fails in a second, not after the data is loaded."""
    import zipfile

    path = Path(path)
    label = f"{what}: {path}" if what else str(path)
    hint = "the file is truncated or corrupted (e.g. a copy or a write that did not finish); use another checkpoint"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:1] == b"\x80":  # torch's legacy (pre-1.6) pickle format: no archive to verify
            return
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise CheckpointError(f"{label}: not a readable checkpoint: {hint} ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{label}: cannot read this checkpoint ({e.strerror or e})") from None
    if broken is not None:
        raise CheckpointError(f"{label}: not a readable checkpoint: {hint} (entry {broken} fails its checksum)")
