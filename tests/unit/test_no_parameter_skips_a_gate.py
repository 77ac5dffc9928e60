"""No parameter of the incident flow, of the drill flow, or of any shipped deployment can skip an approval gate.

The drill's automatic approver is a Python context the drill sets around its own subflow call
(``flows.approval.drill_approver``); these tests try to reach it from the outside surfaces.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.approval import drill_approving
from flows.drill.flow import drill_flow
from flows.incident_response import incident_response

ROOT = Path(__file__).parents[2]


def test_the_incident_flow_has_no_approval_skipping_parameter():
    names = set(incident_response.parameters.properties)
    assert "auto_approve" not in names and not {n for n in names if "approv" in n}
    with pytest.raises(Exception, match="auto_approve"):
        incident_response.validate_parameters({"advisory": "a", "inventory": "i", "auto_approve": "mallory"})


def test_no_deployment_sets_an_approver():
    text = (ROOT / "deployments" / "prefect.yaml").read_text()
    assert "approv" not in "".join(str(d.get("parameters")) for d in yaml.safe_load(text)["deployments"])
    assert "auto_approve" not in drill_flow.parameters.properties
    assert "auto_approve" not in (ROOT / "flows" / "serve.py").read_text()


def test_the_drill_approver_is_off_unless_the_drill_sets_it():
    from flows.approval import drill_approver

    assert not drill_approving()
    with drill_approver():
        assert drill_approving()
    assert not drill_approving()
