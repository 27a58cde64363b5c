"""nnU-Net-style planning and preprocessing: fingerprint, target spacing and patch, resampling and its inverse."""
