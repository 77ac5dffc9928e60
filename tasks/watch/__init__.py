"""The drift watch: one cycle (``cycle``) over its sources, events, state and alerts."""
