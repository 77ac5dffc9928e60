"""Egress baselines: every CI runner group's normal destinations, and the first connection to a new one."""
