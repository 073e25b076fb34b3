"""Great Expectations 1.x, run on pandas DataFrames of a run's nights (db/frames.py).

dagster-ge needs GX < 1 (DESIGN.md), so the suites run here, inside plain `@asset_check`s.
GX takes seconds to import: it is imported on the first validation and its ephemeral context
is made once per process (`gx_context`), never at code load and never per check.

A suite is a list of `Expect`s, each a frame, the column that identifies its rows, and one
expectation. The outcome names, per expectation that failed, the ids of the failing rows:
ids only, never a row's other values (which GX's own result would quote).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.data_context import AbstractDataContext


@dataclass(frozen=True)
class Expect:
    """One expectation on one frame: `label` says it in words; `kind` names the GX class
    (in great_expectations.expectations) and `kwargs` are its arguments, built once GX is
    imported."""

    label: str
    frame: str
    id_column: str
    kind: str
    kwargs: Mapping[str, Any]

    def build(self, gxe: Any) -> Any:
        """The expectation, from `gxe` (great_expectations.expectations)."""
        return getattr(gxe, self.kind)(**self.kwargs)


@dataclass(frozen=True)
class SuiteOutcome:
    """Which expectations failed, each with the ids of its failing rows (sorted, as text)."""

    rows: Mapping[str, int]
    failed: Mapping[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failed


@functools.cache
def gx_context() -> AbstractDataContext:
    """The process's one ephemeral GX context: no files, no analytics, no progress bars."""
    # GX would otherwise send usage statistics over the network from a nightly run.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    context.data_sources.add_pandas("billing")
    return context


def validate(
    suite: str, frames: Mapping[str, pd.DataFrame], expects: Sequence[Expect]
) -> SuiteOutcome:
    """Validate each frame against its expectations; the failing rows' ids per expectation.
    A frame with no rows is not handed to GX (every expectation here is on rows: none fails
    on no rows), so a night with nothing to check costs no GX import or validation."""
    rows = {name: len(frame) for name, frame in frames.items()}
    todo = [
        (name, frame, mine)
        for name, frame in frames.items()
        if not frame.empty and (mine := [e for e in expects if e.frame == name])
    ]
    if not todo:
        return SuiteOutcome(rows)
    import great_expectations.expectations as gxe
    from great_expectations.datasource.fluent import PandasDatasource

    source = gx_context().data_sources.get("billing")
    assert isinstance(source, PandasDatasource)
    failed: dict[str, list[str]] = {}
    for name, frame, mine in todo:
        key = f"{suite}.{name}"
        try:
            asset = source.get_asset(key)
        except LookupError:
            asset = source.add_dataframe_asset(key)
        try:
            batches = asset.get_batch_definition("whole")
        except KeyError:
            batches = asset.add_batch_definition_whole_dataframe("whole")
        batch = batches.get_batch(batch_parameters={"dataframe": frame})
        # First whether each expectation holds (half the work of naming rows: GX computes no
        # unexpected lists), then only the failed ones again, naming their rows.
        verdicts = batch.validate(
            _suite(key, mine, gxe), result_format={"result_format": "BOOLEAN_ONLY"}
        )
        broken = {r.expectation_config.meta["label"] for r in verdicts.results if not r.success}
        if not broken:
            continue
        wrong = [e for e in mine if e.label in broken]
        result = batch.validate(
            _suite(key, wrong, gxe),
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": sorted({e.id_column for e in wrong}),
            },
        )
        by_label = {e.label: e for e in wrong}
        for r in result.results:
            if r.success:
                continue
            e = by_label[r.expectation_config.meta["label"]]
            ids = {str(row[e.id_column]) for row in r.result.get("unexpected_index_list") or []}
            failed[e.label] = sorted(ids, key=_natural)
    return SuiteOutcome(rows, failed)


def _suite(name: str, expects: Sequence[Expect], gxe: Any) -> Any:
    """A GX ExpectationSuite of `expects`, each labelled in its meta."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for e in expects:
        expectation = e.build(gxe)
        expectation.meta = {"label": e.label}
        suite.add_expectation(expectation)
    return suite


def _natural(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (0, value)
