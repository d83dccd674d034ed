"""Many files in one command: folders and globs in, an output folder out, bad files reported and skipped, a summary,
name clashes refused before anything runs, and --resume after a real kill of a batch. Real TIFFs, no mocks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_mpi import cli
from napari_mpi._cli_batch import output_name

from .conftest import digest

FAST = ["--iterations", "2", "--weights", "random", "-q"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiff(path: Path, shape=(40, 40), seed=0, axes="YX") -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": axes})
    return data


def _summary(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {Path(row["input"]).name: row for row in csv.DictReader(handle)}


def _planes_done(record: Path) -> int:
    """Planes a one-file run has recorded as on disk (its progress record, beside its unfinished output)."""
    try:
        return sum(high - low + 1 for low, high in json.loads(record.read_text())["done"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


@pytest.fixture
def experiment(tmp_path) -> Path:
    """A folder as a user has it: two good images (one a stack, in a subfolder), a TIFF cut short, a text file named
    .tif, and a notes file that is not an image."""
    folder = tmp_path / "experiment"
    _tiff(folder / "cell1.tif", seed=1)
    _tiff(folder / "day2" / "stack.ome.tif", (2, 40, 40), seed=2, axes="ZYX")
    _tiff(folder / "cut.tif", (3, 40, 40), seed=3, axes="ZYX")
    (folder / "cut.tif").write_bytes((folder / "cut.tif").read_bytes()[:3000])
    (folder / "readme.tif").write_text("not an image")
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_a_folder_is_denoised_bad_files_reported_and_each_output_equals_a_one_file_run(experiment, tmp_path,
                                                                                       capsys):
    before = {path: digest(path) for path in experiment.rglob("*") if path.is_file()}
    out = tmp_path / "out"
    code = cli.main(["denoise", str(experiment), str(tmp_path / "missing.tif"), "-o", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    failures = [line for line in err.splitlines() if line.startswith("napari-mpi: error:")]
    assert len(failures) == 3 and all(name in err for name in ("cut.tif", "readme.tif", "missing.tif"))
    assert "3 file(s) failed" in err
    for relative in ("cell1.tif", "day2/stack.ome.tif"):
        single = tmp_path / "single" / Path(relative).name
        single.parent.mkdir(exist_ok=True)
        assert cli.main(["denoise", str(experiment / relative), "-o", str(single), *FAST]) == 0
        np.testing.assert_array_equal(tifffile.imread(out / relative), tifffile.imread(single))
    rows = _summary(out / "napari-mpi-summary.csv")
    assert set(rows) == {"cell1.tif", "stack.ome.tif", "cut.tif", "readme.tif", "missing.tif"}
    assert rows["cell1.tif"]["status"] == "done" and rows["cell1.tif"]["shape"] == "40x40"
    assert rows["stack.ome.tif"]["axes"] == "ZYX" and int(rows["stack.ome.tif"]["planes_alone"]) + int(
        rows["stack.ome.tif"]["planes_carried"]) == 2
    assert json.loads(rows["cell1.tif"]["settings"])["iterations"] == 2
    assert rows["cut.tif"]["status"].startswith("failed: ") and rows["readme.tif"]["status"].startswith("failed: ")
    assert not (out / "cut.tif").exists() and not (out / "readme.tif").exists()
    assert not list(out.rglob("*.partial*")), "no half-written output under any name"
    assert before == {path: digest(path) for path in experiment.rglob("*") if path.is_file()}, "inputs untouched"


def test_globs_suffix_json_summary_and_existing_outputs_kept(tmp_path, capsys):
    for number in (1, 2):
        _tiff(tmp_path / f"run{number}" / "plate" / "well.tif", seed=number)
    out = tmp_path / "denoised"
    # a quoted glob with **: two inputs named well.tif would write one output, refused before anything runs
    code = cli.main(["denoise", str(tmp_path / "run*" / "**" / "*.tif"), "-o", str(out), *FAST])
    assert code == 2 and "would both be written to" in capsys.readouterr().err and not out.exists()
    first, second = tmp_path / "run1" / "plate" / "well.tif", tmp_path / "run2" / "plate" / "well.tif"
    third = tmp_path / "kept.tif"
    _tiff(third, seed=9)
    out.mkdir()
    assert cli.main(["denoise", str(first), "-o", str(out / "kept.tif"), *FAST]) == 0  # an output already there
    kept = digest(out / "kept.tif")
    assert cli.main(["denoise", str(second), str(third), "-o", str(out), "--summary", str(out / "batch.json"),
                     *FAST]) == 0
    rows = {Path(row["input"]).name: row for row in json.loads((out / "batch.json").read_text())}
    assert rows["kept.tif"]["status"].startswith("skipped: output exists") and digest(out / "kept.tif") == kept
    assert rows["well.tif"]["status"] == "done" and rows["well.tif"]["axes"] == "YX"
    assert cli.main(["denoise", str(tmp_path / "run1" / "**" / "*.tif"), str(third), "-o", str(out), "--suffix",
                     "_dn", *FAST]) == 0
    Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48)).save(tmp_path / "plate.png")
    assert cli.main(["denoise", str(tmp_path / "plate.png"), str(third), "-o", str(out / "more"), "--resume",
                     *FAST]) == 0  # --resume applies to the TIFF; the PNG is written whole
    assert (out / "more" / "plate.png").exists()
    assert (out / "well_dn.tif").exists() and (out / "kept_dn.tif").exists()
    np.testing.assert_array_equal(tifffile.imread(out / "well_dn.tif"), tifffile.imread(out / "kept.tif"))  # first
    assert output_name(Path("a/b.ome.tif"), "_dn") == Path("a/b_dn.ome.tif")
    assert output_name(Path("c.ome.zarr"), "_dn") == Path("c_dn.ome.zarr")
    assert output_name(Path("d.tif"), "") == Path("d.tif")


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path):
    folder = tmp_path / "data"
    _tiff(folder / "a.tif")
    assert cli.main(["denoise", str(folder), "-o", str(folder / "denoised"), *FAST]) == 0
    _tiff(folder / ".a.tif.partial.tif")  # what a killed run leaves: hidden, never an input
    assert cli.main(["denoise", str(folder), "-o", str(folder / "denoised"), "--resume", *FAST]) == 0  # a.tif kept
    assert sorted(p.name for p in (folder / "denoised").iterdir()) == ["a.tif", "napari-mpi-summary.csv"]
    assert _summary(folder / "denoised" / "napari-mpi-summary.csv")["a.tif"]["status"].startswith("skipped")


def test_a_killed_batch_resumed_ends_with_the_uninterrupted_outputs(tmp_path):
    folder = tmp_path / "in"
    _tiff(folder / "a.tif", seed=1)
    _tiff(folder / "b.tif", (5, 40, 40), seed=2, axes="ZYX")
    args = [sys.executable, "-m", "napari_mpi.cli", "denoise", str(folder), "--iterations", "12", "--weights",
            "random", "--threads", "1", "-q"]
    reference = tmp_path / "reference"
    subprocess.run([*args, "-o", str(reference)], check=True, timeout=300, capture_output=True)
    out = tmp_path / "out"
    progress = out / ".b.tif.napari-mpi-progress.json"
    proc = subprocess.Popen([*args, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None and not _planes_done(progress):
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert (out / "a.tif").exists() and not (out / "b.tif").exists(), "killed too late or too early"
    assert 1 <= _planes_done(progress) < 5
    resumed = subprocess.run([*args, "-o", str(out), "--resume"], timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("a.tif", "b.tif"):
        np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(reference / name))
    rows = _summary(out / "napari-mpi-summary.csv")
    assert rows["a.tif"]["status"].startswith("skipped") and rows["b.tif"]["status"].startswith("resumed")
