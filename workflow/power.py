"""How many seeds does a study need? The power of the paired t-test, sized from a pilot study's verdict.

A verdict resolves (``better`` or ``worse``) when the 95% paired t-interval of ``d_s = x_s − b_s`` excludes 0,
which is the two-sided paired t-test rejecting at ``alpha = 0.05``. For a true mean difference ``δ`` and a
seed-to-seed standard deviation ``σ`` of ``d_s`` (normal differences), the test statistic over ``n`` seeds
follows a noncentral t distribution with ``n − 1`` degrees of freedom and noncentrality ``δ·√n / σ``
(Cohen 1988, *Statistical Power Analysis for the Behavioral Sciences*, ch. 2), so its power is::

    power(n) = P(T > t_c) + P(T < −t_c),   T ~ nct(n − 1, δ·√n/σ),   t_c = t_{1 − alpha/2, n − 1}

:func:`seeds_needed` is the smallest ``n ≥ 2`` with ``power(n) ≥`` the target, and
:func:`workflow.effects.t_half_width` the interval's half-width at that ``σ`` (the sample sd varies around it). A
pilot's ``σ`` is read back from its verdict: the interval ``[lo, hi]`` over ``n`` seeds has half-width ``t_{0.975,
n−1}·σ/√n``, so ``σ = (hi − lo)/2 · √n / t_{0.975, n−1}`` exactly (docs/metrics.md, "Planning the number of seeds").

The pilot's seeds size the new study and are not pooled into it: adding seeds to a study after seeing its
verdict is optional stopping, which inflates the error rate of the test.

    python -m workflow.power results/<study>/verdict.json --effect 0.03 [--power 0.8] [--sd 0.04]
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from scipy import stats as sps

from workflow.effects import t_half_width
from workflow.errors import StrataError
from workflow.verdict import read_verdict

ALPHA = 0.05
MAX_SEEDS = 10_000


def paired_t_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` over ``n`` seeds (module docstring).

    Args:
        effect: The true mean paired difference ``δ`` (its sign does not matter).
        sd: The standard deviation ``σ > 0`` of the paired difference over seeds.
        n: Number of seeds; below 2 there is no interval, and the power is 0.
        alpha: Level of the test (0.05: the verdict's 95% interval).

    Both tails count, so a rejection with the wrong sign counts as power too (negligible once power is useful).
    """
    if n < 2:  # no interval below 2 seeds: the verdict cannot resolve
        return 0.0
    if sd <= 0:
        raise ValueError(f"power needs sd > 0 (got {sd})")
    df = n - 1
    t_c = float(sps.t.ppf(1 - alpha / 2, df))
    nc = abs(effect) * math.sqrt(n) / sd
    value = float(sps.nct.sf(t_c, df, nc) + sps.nct.cdf(-t_c, df, nc))
    if not math.isfinite(value):  # SciPy's nct fails far in its tail (large n): the normal limit holds there
        value = float(sps.norm.sf(t_c - nc) + sps.norm.cdf(-t_c - nc))
    return value


def seeds_needed(effect: float, sd: float, power: float = 0.8, alpha: float = ALPHA) -> int:
    """The smallest number of seeds ``n ≥ 2`` whose paired t-test has at least ``power`` against ``effect``.

    Raises:
        ValueError: If ``effect`` is 0, ``sd`` is not positive, ``power`` is not in (alpha, 1), or more than
            ``MAX_SEEDS`` seeds would be needed.
    """
    if not all(map(math.isfinite, (effect, sd, power))) or effect == 0 or sd <= 0 or not alpha < power < 1:
        raise ValueError(f"need a finite effect != 0, sd > 0 and alpha < power < 1 (got {effect}, {sd}, {power})")
    low, high = 1, 2  # power rises with n: double until it reaches the target, then bisect (power(low) < target)
    while paired_t_power(effect, sd, high, alpha) < power:
        if high >= MAX_SEEDS:
            raise ValueError(f"more than {MAX_SEEDS} seeds needed for effect {effect} at sd {sd}")
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        if paired_t_power(effect, sd, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return high


def pilot_sd(comparison: dict[str, Any], confidence: float = 0.95) -> float | None:
    """The sd of the paired difference behind a verdict comparison, from its interval and ``n``.

    Returns:
        ``(hi − lo)/2 · √n / t_{(1+confidence)/2, n−1}``; None if the comparison has fewer than 2 seeds or no
        finite interval, or if every difference was equal (sd 0: nothing to plan from).
    """
    n, lo, hi = comparison.get("n"), comparison.get("ci_low"), comparison.get("ci_high")
    if not all(isinstance(v, int | float) for v in (n, lo, hi)) or n < 2 or not hi > lo:
        return None
    return (hi - lo) / 2 / t_half_width(1.0, n, confidence)  # the half-width is linear in sd


def plan_line(comparison: dict[str, Any], effect: float, power: float, sd: float | None,
              confidence: float = 0.95) -> str:
    """One line per comparison (or pooled comparison): the pilot's sd and the seeds that give ``power``."""
    name = (f"{comparison['curation']} vs {comparison['baseline']} "
            f"({comparison['dataset']} · {comparison['ssl']})")
    source = "given"
    if sd is None:
        sd, source = pilot_sd(comparison, confidence), f"pilot, {comparison.get('n')} seeds"
    if sd is None:
        return f"{name}: no sd to plan from (fewer than 2 seeds, or every paired difference was equal)"
    n = seeds_needed(effect, sd, power)
    return (f"{name}: sd of the paired difference {sd:.4f} ({source}) -> {n} seeds give "
            f"{paired_t_power(effect, sd, n):.0%} power against a true difference of ±{abs(effect):g} "
            f"(expected 95% half-width {t_half_width(sd, n):.3f}; rope ±{comparison.get('rope', '?')})")


def main(argv: list[str] | None = None) -> int:
    """Print, for each comparison of a pilot's verdict, the seeds a new study needs."""
    parser = argparse.ArgumentParser(prog="python -m workflow.power", description=__doc__.split("\n")[0])
    parser.add_argument("verdict", help="the pilot study's results/<study>/verdict.json")
    parser.add_argument("--effect", type=float, required=True,
                        help="the true difference on the primary metric the new study must resolve (e.g. 0.03)")
    parser.add_argument("--power", type=float, default=0.8, help="the wanted power (default 0.8)")
    parser.add_argument("--sd", type=float, default=None,
                        help="plan with this sd of the paired difference instead of the pilot's")
    args = parser.parse_args(argv)
    try:
        given = [args.effect, args.power] + ([] if args.sd is None else [args.sd])
        if (not all(map(math.isfinite, given)) or args.effect == 0 or not ALPHA < args.power < 1
                or (args.sd is not None and args.sd <= 0)):
            raise StrataError("need a finite --effect != 0, 0.05 < --power < 1 and --sd > 0",
                              where=f"--effect {args.effect} --power {args.power} --sd {args.sd}",
                              fix="e.g. --effect 0.03 --power 0.8.")
        verdict = read_verdict(args.verdict)
        comparisons = verdict.get("comparisons") if isinstance(verdict, dict) else None
        pooled = (verdict.get("pooled") or []) if isinstance(verdict, dict) else []
        if not isinstance(comparisons, list) or not comparisons:
            raise StrataError("the verdict has no comparison to plan from", where=args.verdict,
                              fix="run a pilot study with a baseline curation and at least 2 seeds.")
        confidence = float(verdict.get("confidence", 0.95))
        lines = [f"Seeds for {args.power:.0%} power on {verdict.get('primary')} (two-sided paired t-test, "
                 f"alpha {ALPHA}):"]
        rope = verdict.get("rope")
        for prefix, entries in (("", comparisons), ("pooled: ", pooled)):
            lines += [f"  {prefix}" + plan_line({**c, "rope": rope}, args.effect, args.power, args.sd, confidence)
                      for c in entries]
    except (KeyError, TypeError, AttributeError) as err:  # a file that is not a verdict a study wrote
        print(f"power: error: {args.verdict}: not a study's verdict ({type(err).__name__}: {err}); fix: pass the "
              "verdict.json that a study wrote (results/<study>/verdict.json).", file=sys.stderr)
        return 2
    except (StrataError, ValueError) as err:
        print(f"power: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
