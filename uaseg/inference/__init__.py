"""Inference as a library: load a checkpoint (:func:`load_model`), segment one file on its own grid
(:func:`segment_file`), write the outputs on that grid (:func:`write_segmentation`), and all of it for
a list of files (:func:`predict_files`, behind ``python predict.py``). The test report's export uses
the same writers."""

from uaseg.inference.files import case_name, list_inputs, output_paths, resolve_checkpoint, write_segmentation
from uaseg.inference.model import LoadedModel, load_model
from uaseg.inference.predict import choose_threshold, predict_files
from uaseg.inference.segment import segment_file

__all__ = [
    "LoadedModel", "load_model", "segment_file", "write_segmentation", "output_paths", "case_name",
    "list_inputs", "choose_threshold", "predict_files", "resolve_checkpoint",
]
