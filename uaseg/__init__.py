"""uaseg: uncertainty-aware training and exact selective evaluation for medical image segmentation."""

__version__ = "0.1.0"
