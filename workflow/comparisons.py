"""Which curation is compared with which: the ``summary`` section of a study config.

* Every curation is compared with ``summary.baseline`` (default ``random``) over matched seeds.
* With ``summary.curve: {treatment: <method>, control: <method>}`` the study is a size sweep: every curation
  whose method is ``treatment`` is compared with the one curation whose method is ``control`` and whose
  ``target_size`` is the same (the pairing is by ``target_size``, declared explicitly by the two methods); the
  controls are references only. Curations outside the curve are still compared with the baseline.

:func:`check_summary` validates these keys (and ``summary.primary``) before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from workflow.errors import StrataError

#: Metric names the evaluate stage writes (docs/metrics.md); ``summary.primary`` must be one, larger = better.
PRIMARY_PATTERN = re.compile(
    r"(knn_accuracy|linear_accuracy|precision_at_1|recall_at_\d+|r_precision|map_at_r"
    r"|gallery_(precision_at_1|recall_at_\d+|r_precision|map_at_r)"
    r"|cluster_(k\d+_)?(acc|nmi|ari|purity))")


@dataclass(frozen=True)
class CurvePoint:
    """One size of a size sweep: the treatment and control curations that share ``size`` (target_size)."""

    size: int
    treatment: str
    control: str


def curve_points(curations: dict[str, dict[str, Any]], curve: dict[str, str] | None,
                 source: str = "config") -> list[CurvePoint]:
    """The size sweep's pairs, sorted by size; ``[]`` without ``summary.curve``.

    Args:
        curations: The config's ``curations`` (name → section with ``method`` and ``target_size``).
        curve: ``summary.curve`` (``{"treatment": method, "control": method}``) or None.
        source: Config file name for error messages.

    Raises:
        StrataError: If a method has two curations of one size, a size lacks its partner, or no pair exists.
    """
    if not curve:
        return []
    where = f"{source}: summary.curve"
    by_size: dict[str, dict[int, str]] = {curve["treatment"]: {}, curve["control"]: {}}
    if curve["treatment"] == curve["control"]:
        raise StrataError("treatment and control are the same method", where=where,
                          fix="name two different curation methods, e.g. treatment: hkmeans, control: random.")
    for name, cur in sorted(curations.items()):
        sizes = by_size.get(cur.get("method", ""))
        if sizes is None:
            continue
        size = cur.get("target_size")
        if size is None:
            raise StrataError(f"curation {name!r} has no target_size to pair it by", where=where,
                              fix=f"give curations.{name} a target_size.")
        if size in sizes:
            raise StrataError(f"curations {sizes[size]!r} and {name!r} both use method {cur['method']!r} with "
                              f"target_size {size}, so the pairing by size is ambiguous", where=where,
                              fix="keep one curation per method and size in a size sweep.")
        sizes[size] = name
    treat, ctrl = by_size[curve["treatment"]], by_size[curve["control"]]
    unpaired = sorted(set(treat) ^ set(ctrl))
    if unpaired:
        raise StrataError(f"target sizes {unpaired} have a {curve['treatment']} or a {curve['control']} curation "
                          "but not both", where=where,
                          fix="add the missing partner of each size (same target_size, the other method).")
    if not treat:
        raise StrataError(f"no curation uses method {curve['treatment']!r} and {curve['control']!r}", where=where,
                          fix="add curations of both methods at each size, or remove summary.curve.")
    return [CurvePoint(size, treat[size], ctrl[size]) for size in sorted(treat)]


def references(curations: dict[str, dict[str, Any]], baseline: str, curve: dict[str, str] | None = None,
               source: str = "config") -> dict[str, str]:
    """Each compared curation → the curation it is compared with (see the module docstring).

    The baseline and, in a size sweep, the controls are not keys (they are references only).
    """
    points = curve_points(curations, curve, source)
    refs = {p.treatment: p.control for p in points}
    controls = {p.control for p in points}
    for name in curations:
        if name not in refs and name not in controls and name != baseline:
            refs[name] = baseline
    return refs


def check_summary(config: dict[str, Any], source: str = "config") -> None:
    """Validate ``summary.primary`` and ``summary.curve`` of a study (defaults already filled).

    Raises:
        StrataError: Naming the key and the fix.
    """
    summary = config.get("summary", {})
    primary = summary.get("primary", "knn_accuracy")
    if not PRIMARY_PATTERN.fullmatch(primary):
        raise StrataError(f"primary metric {primary!r} is not a metric the evaluate stage writes",
                          where=f"{source}: summary.primary",
                          fix="choose a metric of docs/metrics.md where larger is better, e.g. knn_accuracy.")
    curve_points(config["curations"], summary.get("curve"), source)
