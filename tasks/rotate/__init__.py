"""Stage 3, rotate: the plan and its approved application (``stage``), the backends it drives (``backends``)."""
