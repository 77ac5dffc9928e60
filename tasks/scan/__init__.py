"""Reading repositories: image references (``references``), CI files, and secrets CI jobs could see (``ci_secrets``)."""
