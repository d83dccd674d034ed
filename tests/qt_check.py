"""Can Qt start here? One clear line naming what is missing, instead of Qt aborting the whole test run.

Qt's xcb platform plugin (napari's canvas on Linux, under pytest-xvfb's virtual display) aborts the process when a
system library it links is missing or when there is no X display; pytest then dies without a summary. This asks a
separate Python process to start Qt first, and reads the plugin's libraries with ``ldd`` to name what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

START_QT = "from qtpy.QtWidgets import QApplication; app = QApplication([]); print('started')"


def debian_package(soname: str) -> str:
    """The Debian package that ships a library, by Debian's naming rule: libxcb-icccm.so.4 -> libxcb-icccm4,
    libxkbcommon-x11.so.0 -> libxkbcommon-x11-0, libEGL.so.1 -> libegl1."""
    match = re.fullmatch(r"(.+?)\.so\.(\d+).*", soname)
    if not match:
        return soname
    name, major = match.group(1).lower(), match.group(2)
    return f"{name}-{major}" if name[-1].isdigit() else f"{name}{major}"


def missing_libraries() -> list[str]:
    """System libraries that Qt's xcb platform plugin links and the dynamic loader cannot find (Linux; else [])."""
    try:
        import PyQt6
    except ImportError:
        return []
    plugin = Path(PyQt6.__file__).parent / "Qt6" / "plugins" / "platforms" / "libqxcb.so"
    if not sys.platform.startswith("linux") or not plugin.exists() or shutil.which("ldd") is None:
        return []
    found = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, timeout=60).stdout
    return sorted({line.split()[0] for line in found.splitlines() if "not found" in line})


def qt_start_problem() -> str | None:
    """None when a QApplication starts in a fresh process with this environment; else one line saying what to do."""
    if sys.platform.startswith("linux") and os.environ.get("QT_QPA_PLATFORM", "xcb") == "xcb":
        missing = missing_libraries()
        if missing:
            packages = " ".join(debian_package(name) for name in missing)
            return (f"Qt cannot start: its xcb platform plugin needs {', '.join(missing)}, not installed here; "
                    f"install them (Debian / Ubuntu: apt-get install {packages}; .ci/run does)")
        if not os.environ.get("DISPLAY"):
            return ("Qt cannot start: no X display; install Xvfb (Debian / Ubuntu: apt-get install xvfb) so that "
                    "pytest-xvfb can start one, and leave QT_QPA_PLATFORM unset")
    started = subprocess.run([sys.executable, "-c", START_QT], capture_output=True, text=True, timeout=120)
    if started.returncode == 0 and "started" in started.stdout:
        return None
    said = [line.strip() for line in started.stderr.splitlines() if line.strip()]
    detail = said[0] if said else f"exit status {started.returncode}"
    return f"Qt cannot start a QApplication here ({detail}); run with QT_DEBUG_PLUGINS=1 to see why"
