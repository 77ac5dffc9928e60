"""digestguard package."""
