"""The built-in and paper datasets (``conf/dataset/<name>.yaml`` <-> ``<name>.py``) and their generators."""
