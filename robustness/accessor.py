"""``ds.robustness``: what an rsf dataset holds, read one way by the report, the CLI and a notebook.

Registered as an xarray accessor when this module is imported (the API,
:func:`robustness.load` and :mod:`reports` import it). It is not ``ds.rsf``:
``rsf`` is the results dataset's probe variable (a contract), and an accessor
of that name would hide it::

    stats = robustness.load("stats.nc")
    stats.robustness.kind                    # "stats"
    stats.robustness.specifications()        # [Specification('act_cov', 'k=8', 'fraction'), …]
    stats.robustness.preferred               # Specification('act_cov', 'k=8', 'log_isotropic')
    stats.robustness.verdict()               # one decision per pair (claims: pair × claim)
    stats.robustness.to_frame()              # one row per value, as ``rsf export`` writes it

It reads; it computes nothing a dataset does not already hold, so an older
file reads as it did. In a notebook, ``ds.robustness`` shows the dataset's kind,
pairs, preferred specification and verdicts as a small table.
"""

from __future__ import annotations

import html
import json

import pandas as pd
import xarray as xr

from robustness.io.datasets import dataset_kind
from robustness.io.export import tidy_table
from robustness.settings.specification import SPEC_DIMS, Specification
from robustness.stats.summaries import joint_decision, read_pair_model, read_per_pair

__all__ = ["DatasetAccessor"]


@xr.register_dataset_accessor("robustness")
class DatasetAccessor:
    """The ``robustness`` namespace of an :class:`xarray.Dataset` (see the module docstring)."""

    def __init__(self, dataset: xr.Dataset):
        self._ds = dataset

    @property
    def kind(self) -> str | None:
        """``results``, ``stats``, ``claims``, … (recognised from the variables for older files)."""
        return dataset_kind(self._ds)

    def specifications(self) -> list[Specification]:
        """Every specification the dataset spans, in its coordinates' order."""
        ds = self._ds
        missing = [dim for dim in SPEC_DIMS if dim not in ds.coords]
        if missing:
            raise ValueError(
                f"a {self.kind or 'dataset'} without {', '.join(missing)}: no specifications"
            )
        return [
            Specification(str(c), str(k), str(n))
            for c in ds.construction.values
            for k in ds.cutoff.values
            for n in ds.normalisation.values
        ]

    @property
    def preferred(self) -> Specification | None:
        """The preferred specification the statistics were computed with (``None`` if not recorded)."""
        text = self._ds.attrs.get("preferred_specification")
        return Specification.parse(text) if text else None

    @property
    def read_set(self) -> tuple[str, ...]:
        return tuple(m for m in str(self._ds.attrs.get("read_set", "")).split(",") if m)

    @property
    def write_set(self) -> tuple[str, ...]:
        return tuple(m for m in str(self._ds.attrs.get("write_set", "")).split(",") if m)

    def notes(self) -> list[str]:
        """The sweep's notes, ``"label: note"`` lines (results datasets)."""
        return list(json.loads(self._ds.attrs.get("notes", "[]") or "[]"))

    def per_pair(self) -> dict[str, dict]:
        """The statistics' per-pair summary: sets, counts and the joint tests (stats datasets).

        Rebuilt from the per-pair variables, or an older file's JSON attribute
        (:func:`robustness.stats.summaries.read_per_pair`).
        """
        return read_per_pair(self._ds)

    def pair_model(self) -> dict:
        """The random-effects model across pairs, per phase (stats datasets with several pairs)."""
        return read_pair_model(self._ds)

    def verdict(self) -> pd.Series | pd.DataFrame:
        """Claims: the verdict of every (pair, claim); stats: each pair's joint decision."""
        ds = self._ds
        if "verdict" in ds:
            return ds.verdict.to_pandas()
        if self.kind != "stats":
            raise ValueError(
                f"a {self.kind or 'dataset'} holds no verdict: stats and claims datasets do"
            )
        alpha = float(ds.attrs.get("alpha", 0.05))
        return pd.Series(
            {
                pair: joint_decision(info.get("joint", {}), info["n_layers"], alpha)
                for pair, info in self.per_pair().items()
            },
            name="joint_decision",
        ).rename_axis("pair")

    def to_frame(self) -> pd.DataFrame:
        """One row per value (``rsf export``'s long table)."""
        return tidy_table(self._ds)

    def _repr_html_(self) -> str:
        ds = self._ds
        rows = [
            ("kind", self.kind or "unknown"),
            (
                "pairs",
                ", ".join(map(str, ds.get("pair", []).values)) if "pair" in ds.coords else "",
            ),
        ]
        if self.preferred is not None:
            rows.append(("preferred specification", str(self.preferred)))
        head = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
        )
        body = ""
        if self.kind in ("stats", "claims"):
            body = (
                self.verdict().to_frame().to_html()
                if self.kind == "stats"
                else self.verdict().to_html()
            )
        return f"<table>{head}</table>{body}"
