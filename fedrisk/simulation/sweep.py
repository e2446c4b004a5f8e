"""Sweeps: one scenario, one key varied over a list of values, one run per value.

``[sweep] parameter = "privacy.epsilon"``, ``values = [1.0, 4.0, inf]`` and
optionally ``reference = inf``: :func:`sweep_points` turns the scenario into
one :class:`SweepPoint` per value, each a complete, validated scenario
without a sweep.  A scenario without ``[sweep]`` is a single point.  The
reference point is what the others' *cost* is measured against (for a DP
sweep: the run without noise).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrisk.simulation.scenario import Scenario, value_label


@dataclass(frozen=True)
class SweepPoint:
    """One run of a (possibly swept) scenario.

    Attributes
    ----------
    index : int
        Position in the sweep (0 for a scenario without one).
    parameter : str or None
        The swept dotted key.
    value : object
        Its value in this run.
    scenario : Scenario
        The complete scenario of this run.
    is_reference : bool
        Whether this is the sweep's reference point.
    """

    index: int
    parameter: str | None
    value: object
    scenario: Scenario
    is_reference: bool = False

    @property
    def label(self) -> str:
        """``epsilon=inf``, ``alpha=0.3``... or ``run`` without a sweep."""
        if self.parameter is None:
            return "run"
        return f"{self.parameter.split('.')[-1]}={value_label(self.value)}"

    @property
    def folder(self) -> str:
        return f"{self.index:02d}-{self.label}"


def sweep_points(scenario: Scenario) -> list[SweepPoint]:
    """The runs of a scenario, in the order its sweep lists them."""
    if scenario.sweep is None:
        return [SweepPoint(0, None, None, scenario, True)]
    parameter = scenario.sweep["parameter"]
    reference = scenario.sweep.get("reference")
    points = []
    for i, value in enumerate(scenario.sweep["values"]):
        is_reference = reference is not None and value_label(value) == value_label(reference)
        points.append(SweepPoint(i, parameter, value, scenario.with_value(parameter, value), is_reference))
    return points
