"""One way to reach GitHub or GitLab from the inventory, for every stage that talks to a forge.

assess reads CI runs, rotate writes Actions secrets and CI/CD variables, pin opens
pull requests. Each entry may carry its own ``token``/``api_url``; otherwise the
inventory's ``backends`` give them. The token reference is resolved here, at the
moment of use, and handed straight to the client (never stored or logged).
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from digestguard.credentials import resolve
from digestguard.errors import InputError
from digestguard.inventory import Backends

Forge = Literal["github", "gitlab"]


def forge_client(kind: Forge, backends: Backends, *, source: str, token: str | None = None, api_url: str | None = None):
    """A ``GitHubClient`` or ``GitLabClient`` (a context manager) for ``source`` (names it in errors)."""
    b = backends
    ref = token or (b.github_token if kind == "github" else b.gitlab_token)
    if not ref:
        raise InputError(source, f"no {kind} token: set the entry's token or backends.{kind}_token", field="token")
    secret = SecretStr(resolve(ref, f"{source} token") or "")
    url = api_url or (b.github_api_url if kind == "github" else b.gitlab_api_url)
    if kind == "github":
        from integrations.github import DEFAULT_API_URL, GitHubClient

        return GitHubClient(secret, url or DEFAULT_API_URL)
    if kind == "gitlab":
        from integrations.gitlab import DEFAULT_API_URL, GitLabClient

        return GitLabClient(secret, url or DEFAULT_API_URL)
    raise InputError(source, f"{kind!r} is not a forge (github, gitlab)")
