"""Import jobs: the batch API, the per-file pipeline and its state machine."""
