"""The napari dock widget of napari-mpi: parameters in, a thread worker out, a live output layer, progress, cancel.

One job per module: :mod:`.engine` (the only imports from the rest of the package), :mod:`.texts` (tooltips and
messages), :mod:`.form` (the magicgui controls), :mod:`.presets` (what each preset sets in the form),
:mod:`.layers` (napari layers in and out), :mod:`.run` (the worker's lifecycle), :mod:`.queue` (several layers
one after another) and :mod:`.widget` (the dock widget that wires them). napari's manifest names
``napari_mpi._widget:MPIDenoiseWidget``.
"""

from __future__ import annotations

from .widget import MPIDenoiseWidget

__all__ = ["MPIDenoiseWidget"]
