"""Chained curations: a curation whose pool is another curation's selection (``curations.<name>.pool``).

``hk: {method: hkmeans, pool: sd}`` with ``sd: {method: semdedup}`` deduplicates the data set's pool, then
balances what is left: the ``curate`` job of ``hk`` takes the selection of ``sd`` (same data set, same seed) as
its pool, so the Snakemake DAG runs ``sd`` first. Each curation keeps its own feature space.

Three places use this module:

* the config check (:func:`check_chains`, from :func:`workflow.config.check_study` at Snakemake parse time): an
  unknown name, a self reference or a loop stops the workflow with one message naming ``curations.<c>.pool``;
* the rules (``rules/common.smk``, ``rules/curate.smk``): the chain's upstream configs (:func:`upstream`) go into
  the variant's MLflow params and hash, so that a changed upstream curation is a new variant;
* ``strata curate --pool-selection``: the pool rows the prior selection holds (:func:`selection_rows`) and the
  chain of ``stats.json`` (:func:`chain_stats`): one step per curation from the data set's pool to this one,
  with the kept count and the fraction kept of the previous step and of the data set's pool.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workflow.errors import StrataError

KEY = "pool"


def prior_of(cur: Mapping[str, Any]) -> str | None:
    """The curation whose selection is this curation's pool; None: the data set's pool."""
    return cur.get(KEY)


def check_chains(curations: Mapping[str, Mapping[str, Any]], source: str = "config") -> None:
    """Check every ``pool`` of the study's curations (after the feature grid is expanded).

    Raises:
        StrataError: ``pool`` on the curation ``none``, a name that is not a curation of the study, a curation
            that names itself, or a loop (``a → b → a``); the message names ``curations.<c>.pool`` and the fix.
    """
    for name, cur in curations.items():
        prior = prior_of(cur)
        if prior is None:
            continue
        where = f"{source}: curations.{name}.{KEY}"
        if cur.get("method") == "none":
            raise StrataError("the whole-pool curation (method none) cannot take another curation's selection as "
                              "its pool", where=where, fix=f"remove `{KEY}` from it (give it to a curation that "
                                                           "selects).")
        if prior == name:
            raise StrataError(f"curation {name!r} names itself as its pool", where=where,
                              fix=f"name another curation of the study, or remove `{KEY}` (null = the data set's "
                                  "pool).")
        if prior not in curations:
            spaces = [c for c in curations if c.startswith(f"{prior}.")]  # a list of features expands the name
            if spaces:
                raise StrataError(f"{prior!r} has a list of feature spaces, so the study has one curation per space "
                                  f"({', '.join(spaces)}) and none named {prior!r}", where=where,
                                  fix=f"name the one whose selection is the pool, e.g. `{KEY}: {spaces[0]}`.")
            raise StrataError(f"{prior!r} is not a curation of the study (curations: {', '.join(curations)})",
                              where=where, fix=f"name one of those curations, or remove `{KEY}` (null = the data "
                                               "set's pool).")
    for name in curations:
        seen = [name]
        prior = prior_of(curations[name])
        while prior is not None:
            if prior in seen:
                loop = " → ".join([*seen[seen.index(prior):], prior])
                raise StrataError(f"the pools of these curations form a loop ({loop}); a chain must start at the "
                                  "data set's pool", where=f"{source}: curations.{name}.{KEY}",
                                  fix=f"remove `{KEY}` from one curation of the loop (null = the data set's pool).")
            seen.append(prior)
            prior = prior_of(curations[prior])


def chain_of(curations: Mapping[str, Mapping[str, Any]], name: str) -> list[str]:
    """The curations from the first one on the data set's pool to ``name`` (a checked study: no loop)."""
    names = [name]
    while (prior := prior_of(curations.get(names[-1], {}))) is not None:
        names.append(prior)
    return names[::-1]


def upstream(curations: Mapping[str, Mapping[str, Any]], name: str,
             config_of: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """``{"upstream": {name: config}}`` of the curations before ``name`` in its chain (``config_of``: a
    curation's parameters), for the variant's MLflow params and hash; ``{}`` for an unchained curation, whose
    hash is thus what it was before chains existed."""
    names = chain_of(curations, name)[:-1]
    return {"upstream": {n: config_of(n) for n in names}} if names else {}


def selection_rows(pool_ids: np.ndarray, path: str) -> np.ndarray:
    """The rows of the pool (ascending) whose ids the prior curation's ``selection.parquet`` holds.

    Raises:
        StrataError: an unreadable table, no ``id`` column, an empty selection, or ids the pool lacks (a
            selection of another data set).
    """
    import pyarrow.parquet as pq

    where = f"--pool-selection {path}"
    fix = "pass the selection.parquet of a curation of the same data set (the workflow does: curations.<c>.pool)."
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise StrataError(f"cannot read the prior selection ({err})", where=where, fix=fix) from err
    if "id" not in table.column_names:
        raise StrataError("the prior selection has no `id` column", where=where, fix=fix)
    ids = np.unique(np.asarray(table.column("id").to_numpy(zero_copy_only=False), dtype=np.int64))
    if ids.size == 0:
        raise StrataError("the prior selection is empty: nothing is left to curate", where=where,
                          fix="check the prior curation (its stats.json), or curate the data set's pool.")
    rows = np.flatnonzero(np.isin(np.asarray(pool_ids, dtype=np.int64), ids))
    if rows.size != ids.size:
        raise StrataError(f"{ids.size - rows.size} of the {ids.size} ids of the prior selection are not in the pool",
                          where=where, fix=fix)
    return rows


def prior_pool(pool_ids: np.ndarray, selection: str | None, stats: str | None, name: str, method: str
               ) -> tuple[np.ndarray | None, dict[str, Any] | None, str]:
    """``strata curate --pool-selection --pool-stats``: the pool rows of the prior selection, the prior's stats and
    the map's :func:`pool_note`; ``(None, None, "")`` without them. Checked before any work is done.

    Raises:
        StrataError: one flag without the other, an unreadable file, or prior stats that do not match.
    """
    if selection is None and stats is None:
        return None, None, ""
    if not (selection and stats):
        raise StrataError("--pool-selection and --pool-stats go together", where="strata curate",
                          fix="pass the prior curation's selection.parquet and its stats.json, or neither.")
    rows = selection_rows(pool_ids, selection)
    where = f"--pool-stats {stats}"
    try:
        prior_stats = json.loads(Path(stats).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise StrataError(f"cannot read the prior curation's stats ({err})", where=where,
                          fix="pass the stats.json of the prior curation's job (re-run it).") from err
    if not isinstance(prior_stats, dict):
        raise StrataError("expected a JSON object", where=where, fix="pass the stats.json of the prior curation's job.")
    prior = chain_stats(prior_stats, name, method, 0, len(pool_ids), len(rows), where)[:-1]
    return rows, prior_stats, pool_note(prior)


def chain_stats(prior_stats: Mapping[str, Any] | None, name: str, method: str, kept: int, pool_size: int,
                prior_kept: int | None = None, where: str = "--pool-stats") -> list[dict[str, Any]]:
    """``stats["chain"]``: the prior's chain (from its ``stats.json``; none on the data set's pool) and this step.

    Each step: ``curation``, ``method``, ``kept`` and ``fraction_kept`` (of the previous step's kept items, the
    data set's pool for the first) and ``fraction_of_pool`` (of the data set's pool).

    Args:
        prior_stats: The prior curation's ``stats.json``, or None on the data set's pool.
        name: This curation's name.
        method: Its method.
        kept: Its selected items.
        pool_size: The data set's pool size.
        prior_kept: The prior selection's size (checked against the prior's last step).
        where: The prior stats' file, for messages.

    Raises:
        StrataError: prior stats of another pool, or that do not match the prior selection.
    """
    steps: list[dict[str, Any]] = []
    if prior_stats is not None:
        fix = "pass the stats.json written with the prior selection (re-run that curate job if either changed)."
        if int(prior_stats.get("pool_size", -1)) != pool_size:
            raise StrataError(f"the prior curation curated a pool of {prior_stats.get('pool_size')} items, this "
                              f"pool has {pool_size}", where=where, fix=fix)
        steps = [dict(step) for step in prior_stats.get("chain", ())]
        if not steps:  # a stats.json from before chains: its curation is the first step
            size = int(prior_stats.get("selected_size", prior_kept or 0))
            steps = [_step(str(prior_stats.get("curation", prior_stats.get("method"))), str(prior_stats.get("method")),
                           size, pool_size, pool_size)]
        if prior_kept is not None and steps[-1]["kept"] != prior_kept:
            raise StrataError(f"the prior stats record {steps[-1]['kept']} kept items, its selection holds "
                              f"{prior_kept}", where=where, fix=fix)
    previous = steps[-1]["kept"] if steps else pool_size
    return [*steps, _step(name, method, kept, previous, pool_size)]


def _step(name: str, method: str, kept: int, previous: int, pool_size: int) -> dict[str, Any]:
    return {"curation": name, "method": method, "kept": int(kept),
            "fraction_kept": kept / previous if previous else 0.0,
            "fraction_of_pool": kept / pool_size if pool_size else 0.0}


def chain_metrics(chain: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """MLflow metrics of a chain of two or more steps: ``chain{i}_kept``, ``chain{i}_fraction_kept`` and
    ``chain{i}_fraction_of_pool``, step 1 first; none for a curation on the data set's pool (its
    ``selected_size`` and ``pool_size`` say it all)."""
    if len(chain) < 2:
        return {}
    metrics: dict[str, float] = {}
    for i, step in enumerate(chain, start=1):
        metrics[f"chain{i}_kept"] = float(step["kept"])
        metrics[f"chain{i}_fraction_kept"] = float(step["fraction_kept"])
        metrics[f"chain{i}_fraction_of_pool"] = float(step["fraction_of_pool"])
    return metrics


def pool_note(prior_steps: Sequence[Mapping[str, Any]]) -> str:
    """One line for the map's title of a chained curation, what its pool is: ``pool: the selection of sd, 90% of
    the data set's pool``, or with longer chains ``... of sd (kept 90%) → hk (kept 50%), 45% of ...``; '' on the
    data set's pool."""
    if not prior_steps:
        return ""
    many = len(prior_steps) > 1
    steps = " → ".join(s["curation"] + (f" (kept {s['fraction_kept']:.0%})" if many else "") for s in prior_steps)
    return f"pool: the selection of {steps}, {prior_steps[-1]['fraction_of_pool']:.0%} of the data set's pool"
