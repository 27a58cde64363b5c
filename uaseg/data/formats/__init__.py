"""File-based datasets in standard layouts (nnU-Net, Decathlon) and how their files are found and read."""
