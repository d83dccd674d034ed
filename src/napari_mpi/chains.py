"""Which planes of a stack carry one network from plane to plane (chains), and how each plane was filled.

Pure Python: the engine's :mod:`~napari_mpi.engine.chain` carries the network inside a chain; this module cuts a
stack into chains that a resumed run or a Dask worker can take whole, and keeps the per-plane reports that the
command line, the widget and the output metadata show.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from .plan import DenoisePlan

__all__ = ["PlaneReport", "summarise_reports", "plane_chains", "needed_planes"]


@dataclass(frozen=True)
class PlaneReport:
    """How one plane was filled: from the previous plane's network (``carried``) or from the weights, with the
    mismatch and change that decided it (``reuse_network="auto"``; :mod:`napari_mpi.engine.chain`), and its
    training steps and iterations (steps and predictions; window steps when the plane is filled in windows, 0 for
    a constant plane)."""

    plane: int
    index: tuple
    carried: bool
    mismatch: float | None
    change: float | None
    steps: int
    iterations: int

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for metadata: plane number, start ("carried" or "weights"), mismatch, change, steps,
        iterations."""
        mismatch = None if self.mismatch is None else round(self.mismatch, 3)
        change = None if self.change is None else round(self.change, 3)
        return {"plane": self.plane, "start": "carried" if self.carried else "weights", "mismatch": mismatch,
                "change": change, "steps": self.steps, "iterations": self.iterations}


def summarise_reports(reports: list[dict[str, Any]]) -> str:
    """Reports (``PlaneReport.as_dict``) in words, e.g. "9 of 10 planes carried the previous plane's network (12 steps
    on average), 1 of 10 started from the weights (100 steps on average)"."""
    parts = []
    for start, what in (("carried", "carried the previous plane's network"), ("weights", "started from the weights")):
        steps = [r["steps"] for r in reports if r["start"] == start]
        if steps:
            parts.append(f"{len(steps)} of {len(reports)} planes {what} ({sum(steps) / len(steps):.0f} steps on "
                         "average)")
    return ", ".join(parts) or "no plane filled"


def plane_chains(plan: DenoisePlan) -> list[list[tuple[int, tuple]]]:
    """The planes as (plane number, index) in the order they are filled, in chains that carry one network: one plane
    each without ``plan.reuse_network``; else runs of at most ``FillConfig.reuse_chain_planes`` planes of one channel
    (``plan.channel_axis``), in plane order. A resumed run and Dask workers take whole chains, so they give the same
    result as one uninterrupted run."""
    numbered = list(enumerate(plan.layout.indices()))
    if not plan.reuse_network:
        return [[plane] for plane in numbered]
    axis = None if plan.channel_axis is None else plan.channel_axis % len(plan.layout.shape)
    by_channel: dict[int, list[tuple[int, tuple]]] = {}
    for number, index in numbered:
        by_channel.setdefault(0 if axis is None else index[axis], []).append((number, index))
    size = plan.config.reuse_chain_planes
    chains = [planes[i:i + size] for planes in by_channel.values() for i in range(0, len(planes), size)]
    return sorted(chains, key=lambda chain: chain[0][0])


def needed_planes(chain: list[tuple[int, tuple]], skip: Container[int]) -> list[tuple[int, tuple]]:
    """The planes of a chain to fill when those in ``skip`` are already done: up to the last plane not done."""
    last = max((i for i, (number, _) in enumerate(chain) if number not in skip), default=-1)
    return chain[:last + 1]
