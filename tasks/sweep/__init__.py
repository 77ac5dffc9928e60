"""The network sweep: the stage (``run``) over the matching engine (``engine``)."""
