"""The drill: a tabletop exercise against a sandbox built on this machine (``flow``), the real services it
starts (``registry``, ``podman``, ``services``) and the vendor stand-ins the drill itself needs (``servers/``)."""
