"""The installed version of napari-mpi (imports nothing from the package)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-mpi")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
