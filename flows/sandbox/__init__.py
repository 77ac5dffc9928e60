"""The drill's sandbox: real services started on loopback, and local servers that speak vendor protocols.

Why this lives in the product and not only in ``tests/``: ``digestguard drill``
runs the whole playbook on a machine with no cloud accounts, so it needs the
same stand-ins the tests use. Real programs where they exist here (Debian's
docker-registry, podman, OpenBao, moto); protocol servers (``servers/``) where
no real server can run (GitHub, GitLab, Slack, Azure Key Vault, GCP Secret
Manager, Kubernetes, Docker Hub's APIs, Artifact Registry). Nothing here is
imported by the stages themselves.
"""
