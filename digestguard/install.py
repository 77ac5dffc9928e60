"""Is this installation whole? The upper floors' packages must be ours, not another distribution's.

digestguard installs four top-level packages; three have generic names (``flows``, ``tasks``,
``integrations``) that any other distribution in the same environment could also install. Python then
imports whichever comes first on ``sys.path``, and digestguard would run someone else's code as its
stages. ``check_own_packages`` finds each name with ``importlib.util.find_spec`` (which locates a
top-level package without importing it) and refuses unless it resolves to the directory beside this
``digestguard`` package, where the same wheel (or checkout) put it. The CLI calls it first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from digestguard.errors import DigestguardError

UPPER_FLOORS = ("integrations", "tasks", "flows")
_HOME = Path(__file__).resolve().parent.parent


class ForeignPackage(DigestguardError):
    """A top-level package digestguard ships resolves somewhere else (shadowed, or missing)."""


def _location(name: str) -> Path | None:
    """Where ``name`` would be imported from: its package directory, or the module file; None when not found."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: already in sys.modules without a __spec__
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(spec.origin).resolve() if spec.origin else None


def foreign_packages() -> list[str]:
    """One description per upper-floor package that is not this installation's (empty when all are ours)."""
    out = []
    for name in UPPER_FLOORS:
        expected = _HOME / name
        found = _location(name)
        if found != expected:
            where = found if found is not None else "nowhere"
            out.append(f"'{name}' resolves to {where}, not {expected}")
    return out


def check_own_packages() -> None:
    """Raise ``ForeignPackage`` (one line) when another distribution's package shadows one of ours."""
    foreign = foreign_packages()
    if foreign:
        raise ForeignPackage(
            "; ".join(foreign) + ": another distribution's package of the same name shadows digestguard's;"
            " install digestguard into its own environment (python -m venv, or pipx)")
