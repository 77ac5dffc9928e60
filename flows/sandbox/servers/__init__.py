"""Local servers that speak vendor protocols (GitHub, GitLab, Slack, Azure Key Vault, GCP Secret Manager, Kubernetes), for the drill and the tests."""
