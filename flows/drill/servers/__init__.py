"""Local servers speaking the GitHub, Slack and GCP Secret Manager protocols: the stand-ins the drill runs on."""
