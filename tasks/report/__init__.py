"""The incident report: its model, rebuilt from the journal, rendered as HTML and published as Prefect artifacts."""
