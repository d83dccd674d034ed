"""The check that runs before any Qt test: Qt that cannot start is one clear line, not an aborted test run."""

from __future__ import annotations

import pytest

from .qt_check import debian_package, missing_libraries, qt_start_problem


@pytest.mark.parametrize("soname,package", [
    ("libxcb-icccm.so.4", "libxcb-icccm4"), ("libxcb-keysyms.so.1", "libxcb-keysyms1"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0"), ("libEGL.so.1", "libegl1"), ("libdbus-1.so.3", "libdbus-1-3"),
    ("libxcb-render-util.so.0", "libxcb-render-util0"),
])
def test_missing_libraries_are_named_as_debian_packages(soname, package):
    assert debian_package(soname) == package


def test_qt_starts_here():
    """The display stack of this machine is complete (CI installs it): no library missing, Qt starts."""
    assert missing_libraries() == []
    assert qt_start_problem() is None


def test_a_display_that_is_not_there_is_one_line_not_an_abort(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":4321")  # no X server answers there
    problem = qt_start_problem()
    assert problem is not None and problem.startswith("Qt cannot start") and "\n" not in problem
