"""The drill: a tabletop exercise against a sandbox built on this machine (``flow``), the real services it
starts (``registry``, ``podman``, ``services``) and the vendor stand-ins the drill itself needs (``servers/``)."""

from flows.drill.services import quiet_prefect_server

# Prefect reads its settings once, when it is first imported: the drill's start-up timeout and quiet services
# must be in the environment before any drill module imports it (``import flows.drill.flow`` included).
quiet_prefect_server()
