"""A row of several seeds against a published number: the rule, and how the diff shows it.

The published rows are single runs; a row we train with n >= 2 seeds (:mod:`dnlrepro.core.runs`)
is judged by its seeds' mean, with the tolerance widened to ``K_STD`` standard deviations of the
seeds when they spread more than the tolerance (docs/pipeline.md#seeds).
"""

from __future__ import annotations

from typing import Any

from dnlrepro.reports.results import Spread

# With n >= 2 seeds a published number passes within mean +- max(tolerance, K_STD * std).
# The published number is one run drawn from the same run-to-run distribution as our seeds,
# so it is judged against that distribution, not against one point (the idea of MLPerf's
# reference-convergence checker: https://github.com/mlcommons/logging/blob/master/
# mlperf_logging/rcp_checker/rcp_checker.py). A normal draw lies within 2 std of the mean about
# 95% of the time; the tolerance stays the floor because 2-3 seeds can underestimate the std.
K_STD = 2.0
SEED_RULE = (
    f"n >= 2 seeds: pass when |mean - published| <= max(tolerance, {K_STD:g} x std); the "
    "published number is a single run from the same run-to-run distribution (docs/pipeline.md"
    "#seeds)"
)


def allowed(tolerance: float | None, spread: Spread | None) -> tuple[float | None, str]:
    """(the deviation a row may have, the rule applied): ``tolerance`` for one seed, else
    ``max(tolerance, K_STD x std)`` of the seeds."""
    if tolerance is None or spread is None or spread.n < 2 or spread.std is None:
        return tolerance, "|delta| <= tolerance"
    return round(max(tolerance, K_STD * spread.std), 4), SEED_RULE


def seed_fields(spread: Spread | None) -> dict[str, Any]:
    """The spread beside a verdict: n, std and the per-seed values (n = 1: just n)."""
    if spread is None:
        return {"n": 0, "std": None, "seeds": {}}
    return {
        "n": spread.n,
        "std": spread.std,
        "seeds": {str(s): v for s, v in zip(spread.seeds, spread.values, strict=True)},
    }


def tolerance_text(row: dict[str, Any]) -> str:
    """``±0.50``; for several seeds ``±0.62 (max of ±0.50, 2 x std 0.31; n=3)``."""
    if row.get("tolerance") is None:
        return "n/a"
    text = f"±{row['tolerance']:.2f}"
    limit, std = row.get("allowed"), row.get("std")
    if std is not None and limit is not None:
        text = f"±{limit:.2f} (max of {text}, {K_STD:g} x std {std:.2f}; n={row['n']})"
    return text


def reproduced_text(row: dict[str, Any]) -> str:
    """The reproduced number; for a row of several seeds the mean with each seed's value."""
    text = "-" if row["reproduced"] is None else f"{row['reproduced']:.2f}"
    if row.get("std") is not None:
        seeds = ", ".join(f"seed {s}: {v:.2f}" for s, v in row["seeds"].items())
        text += f" (mean; {seeds})"
    return text


def rule_text(row: dict[str, Any]) -> str:
    """The rule a verdict applied, as diff.md and the page show it (the seed rule in short)."""
    rule = row.get("rule")
    if rule == SEED_RULE:
        return f"n >= 2 seeds: |mean - published| <= max(tolerance, {K_STD:g} x std)"
    return str(rule) if rule else "-"


def verdict(
    published: float | None, reproduced: float | None, tolerance: float | None
) -> tuple[str, float | None]:
    """(verdict, delta) for one number. ``published``/``tolerance`` None -> not comparable."""
    if published is None or tolerance is None:
        return "not comparable", None
    if reproduced is None:
        return "missing", None
    delta = round(reproduced - published, 4)
    # Numbers are rounded to 2 decimals on both sides; 1e-9 absorbs float noise of the subtraction.
    return ("pass" if abs(delta) <= tolerance + 1e-9 else "fail"), delta
