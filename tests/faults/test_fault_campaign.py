"""The fault campaign in the test suite: one round per fault type by default.

`--fault-rounds N` (or LIFEOS_FAULT_ROUNDS) runs a longer one; `python -m tests.faults.campaign`
runs one outside pytest with a line per round (docs/operations.md shows a long campaign).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.campaign import FAULTS, Campaign, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(0)]


def test_no_fault_breaks_an_invariant(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    rounds = int(request.config.getoption("fault_rounds"))
    max_outage = float(request.config.getoption("fault_max_outage"))
    lines: list[str] = []
    with running_stack(tmp_path / "campaign", big=rounds > len(FAULTS)) as stack:
        report = Campaign(stack, seed=19, max_outage=max_outage, say=lines.append).run(rounds)
    print("\n".join([*lines, report.summary()]))
    assert not report.violations, "\n".join(lines)
    assert len(report.rounds) == rounds
    if rounds >= len(FAULTS):
        assert {r.fault for r in report.rounds} == set(FAULTS)
