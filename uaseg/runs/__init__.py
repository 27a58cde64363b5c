"""A run folder and what enters or leaves it: claiming and locking, checkpoint I/O, Hydra callbacks,
loggers, and the trust check of artefacts made elsewhere."""
