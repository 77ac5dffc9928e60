"""Steps ``deployments/prefect.yaml`` runs on a worker before a flow run starts.

``enter_digestguard_home`` is the pull step: it moves into ``$DIGESTGUARD_HOME``
(the checkout the deployments' entrypoints are relative to) and fails at once,
naming what is missing, when that variable is unset or wrong or when a variable
the deployment requires is absent. Without it the run crashed much later, from
a wrong working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "DIGESTGUARD_HOME"
ENTRYPOINTS = ("flows/incident_response.py", "flows/watch.py", "flows/drill/flow.py")


class WorkerEnvironmentError(RuntimeError):
    """The worker's environment cannot run a digestguard deployment; the message names what to set."""


def enter_digestguard_home(require: list[str] | None = None) -> dict[str, str]:
    """Pull step: ``cd $DIGESTGUARD_HOME`` after checking it holds the entrypoints and ``require``'d variables are set."""
    home = os.environ.get(HOME_ENV, "").strip()
    if not home:
        raise WorkerEnvironmentError(f"{HOME_ENV} is not set on this worker: set it to the digestguard checkout (the "
                                     "folder holding flows/ and deployments/) in the worker's environment or the work "
                                     "pool's job variables")
    path = Path(home).expanduser()
    missing = [e for e in ENTRYPOINTS if not (path / e).is_file()]
    if missing:
        raise WorkerEnvironmentError(f"{HOME_ENV}={home} is not a digestguard checkout: {', '.join(missing)} not found there")
    unset = [name for name in (require or []) if not os.environ.get(name, "").strip()]
    if unset:
        raise WorkerEnvironmentError(f"this deployment needs {', '.join(unset)} set on the worker; it is not")
    os.chdir(path)
    return {"directory": str(path.resolve())}
