"""`mlops-iac score` against faults in its inputs and its output disk, run as a user runs it:
a flipped bit under a page checksum, a corrupt snappy page, a full disk, a number too large
for the model's type. Each one is a located, one-line error (or a reject) and a manifest
that says what happened."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_iris

from .conftest import cli

FEATURES = [f"x{j}" for j in range(4)]


def flowers(repeat: int = 1) -> pa.Table:
    x = np.tile(load_iris().data.astype(np.float32), (repeat, 1))
    return pa.table({"flower_id": np.arange(len(x)), **{name: x[:, j] for j, name in enumerate(FEATURES)}})


def score(cwd: Path, out: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    flags = [a for p in inputs for a in ("--input", str(p))]
    return cli("score", "iris@1", *flags, "--output", str(out), "--threads", "1", "--workers", "1", *extra, cwd=cwd)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI's refusal: exit 1 and a single line on stderr, no traceback."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def manifest_of(out: Path) -> dict[str, object]:
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert isinstance(summary, dict)
    return summary


def column_chunk(path: Path, name: str) -> tuple[int, int]:
    """The byte range of column `name`'s chunk in the first row group (its pages)."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == name)
    return chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size


def test_a_flipped_bit_under_a_page_checksum_is_refused(converted: Path) -> None:
    """A page written with its CRC and one bit flipped since: read without verification, the
    file scores with other values; `score` verifies the CRC and refuses it, naming the file."""
    path = converted / "flowers.parquet"
    pq.write_table(flowers(), path, write_page_checksum=True, compression="none", use_dictionary=False)
    first, end = column_chunk(path, "x2")
    data = bytearray(path.read_bytes())
    data[end - 1] ^= 0x01  # the last byte of the page: the top byte of x2's last value, never the header
    path.write_bytes(bytes(data))
    changed = pq.read_table(path).column("x2").to_numpy()  # pyarrow's default: no verification
    assert changed[-1] != flowers().column("x2").to_numpy()[-1] and first < end - 1

    done = score(converted, converted / "scored", path)

    error = one_line_error(done)
    assert str(path) in error and "CRC checksum verification failed" in error, error
    summary = manifest_of(converted / "scored")
    assert summary["status"] == "failed" and "CRC checksum verification failed" in str(summary["error"])
    assert not list((converted / "scored").glob("part-*")), "no part of a corrupt input is published"


def _with_corrupt_snappy_page(path: Path, column: str) -> bytes:
    """The file with one byte of `column`'s page changed so that pyarrow's own reader says the
    snappy data is corrupt: the first such byte of the chunk (the header's bytes fail otherwise)."""
    original = path.read_bytes()
    first, end = column_chunk(path, column)
    for offset in range(first, end):
        data = bytearray(original)
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            pq.read_table(path)
        except OSError as exc:
            if "Corrupt snappy compressed data" in str(exc):
                return bytes(data)
    raise AssertionError("no single byte makes the page corrupt snappy data")


def test_a_corrupt_snappy_page_names_the_file_and_the_manifest_records_it(converted: Path) -> None:
    path = converted / "flowers.parquet"
    pq.write_table(flowers(), path, compression="snappy", use_dictionary=False)
    path.write_bytes(_with_corrupt_snappy_page(path, "x1"))

    done = score(converted, converted / "scored", path)

    error = one_line_error(done)
    assert str(path) in error and "Corrupt snappy compressed data" in error, error
    summary = manifest_of(converted / "scored")
    assert summary["status"] == "failed" and "Corrupt snappy compressed data" in str(summary["error"])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB file system that fills (we are root in CI; elsewhere the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all of `disk`'s free space but `leave` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(free - leave, 0))
    return filler


def test_a_full_disk_names_the_output_and_resume_after_freeing_it_gives_the_same_bytes(
    converted: Path, small_disk: Path
) -> None:
    """The output's disk is full: when the manifest is written, the error names it; inside the
    first part, the error names the part, nothing half-written stays visible, and the manifest
    records the error with every part pending. Once space is freed, --resume gives a clean
    run's bytes. (The first part, not a later one: a later part's writes race with the
    manifest's record of the part before it, which the disk refuses just as well.)"""
    path = converted / "flowers.parquet"
    noisy = flowers(repeat=100)  # 15,000 rows: 3 parts of 5,000, distinct scores (no repeats to compress)
    jitter = np.random.default_rng(0).normal(0, 0.01, (noisy.num_rows, 4)).astype(np.float32)
    for j, name in enumerate(FEATURES):
        noisy = noisy.set_column(j + 1, name, pa.array(noisy.column(name).to_numpy() + jitter[:, j]))
    pq.write_table(noisy, path)
    settings = ("--batch-size", "500", "--part-rows", "5000")
    reference = converted / "reference"
    assert score(converted, reference, path, extra=settings).returncode == 0
    want = {p.name: p.read_bytes() for p in sorted(reference.iterdir())}
    room = 2 * len(want["manifest.json"]) + 8192  # the manifest, rewritten beside itself
    assert len(want["part-00000.parquet"]) > 4 * room, "the part must be much larger than the manifest"
    out = small_disk / "scored"

    filler = _fill(small_disk, 0)
    error = one_line_error(score(converted, out, path, extra=settings))
    assert str(out / "manifest.json") in error and "No space left on device" in error, error
    filler.unlink()

    filler = _fill(small_disk, room + len(want["part-00000.parquet"]) // 2)
    error = one_line_error(score(converted, out, path, extra=settings))
    assert str(out / "part-00000.parquet") in error and "No space left on device" in error, error
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["status"] for p in manifest["parts"]] == ["pending"] * 3
    assert manifest["summary"]["status"] == "failed" and str(out / "part-00000.parquet") in manifest["summary"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]

    filler.unlink()
    resumed = score(converted, out, path, extra=(*settings, "--resume", "--json"))
    assert resumed.returncode == 0, resumed.stderr
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == want
    shutil.rmtree(out)


def test_a_number_that_overflows_the_models_type_is_a_reject_with_the_reason(converted: Path) -> None:
    """ "1e400" as text (CSV, or a JSON string) and 1e300 as a double all become inf as float32:
    each is a reject that says so, and the other rows are scored."""
    table = flowers()
    text = table.cast(pa.schema([("flower_id", pa.int64())] + [(n, pa.string()) for n in FEATURES]))
    cells = text.column("x0").to_pylist()
    text = text.set_column(1, "x0", pa.array(["1e400" if i == 7 else v for i, v in enumerate(cells)]))
    pacsv.write_csv(text, converted / "a.csv")
    (converted / "b.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in text.to_pylist()))
    doubles = table.cast(pa.schema([("flower_id", pa.int64())] + [(n, pa.float64()) for n in FEATURES]))
    values = doubles.column("x3").to_pylist()
    doubles = doubles.set_column(4, "x3", pa.array([1e300 if i == 9 else v for i, v in enumerate(values)]))
    pq.write_table(doubles, converted / "c.parquet")
    inputs = [converted / n for n in ("a.csv", "b.jsonl", "c.parquet")]

    done = score(converted, converted / "scored", *inputs, extra=("--part-rows", "150", "--error-threshold", "3"))

    assert done.returncode == 0, done.stderr
    files = sorted((converted / "scored").glob("rejects-*.parquet"))
    assert [f.name for f in files] == ["rejects-00000.parquet", "rejects-00001.parquet", "rejects-00002.parquet"]
    rejects = pq.read_table(files)
    assert rejects.column("flower_id").to_pylist() == [7, 7, 9]
    assert rejects.column("reason").to_pylist() == [
        "column 'x0': value 1e400 overflows float32",
        "column 'x0': value 1e400 overflows float32",
        "column 'x3': value 1e+300 overflows float32",
    ]
    scored = pq.read_table(sorted((converted / "scored").glob("part-*.parquet")))
    assert scored.num_rows == 3 * 150 - 3
    assert manifest_of(converted / "scored")["rejects"] == 3


def test_a_bad_value_inside_a_list_rejects_its_row_beside_a_list_of_the_wrong_length() -> None:
    """In a batch that also holds a list of the wrong length, a missing or too large value
    inside a list of the right length still rejects its row (it was scored as 0 before)."""
    from mlops_iac.scoring.features import InputMap, arrays

    column = pa.array([[1.0, 2.0, 3.0, 4.0], [1.0, None, 3.0, 4.0], [1.0, 2.0, 3.0], [1e300, 2.0, 3.0, 4.0]])
    reasons: dict[int, str] = {}
    feeds = arrays(
        pa.table({"features": column}), [InputMap("input", ("features",), np.dtype(np.float32), 4, False)], reasons
    )
    assert reasons == {
        1: "column 'features': missing value",
        2: "column 'features': 3 values; expected 4",
        3: "column 'features': value 1e+300 overflows float32",
    }
    np.testing.assert_array_equal(feeds["input"][0], [1.0, 2.0, 3.0, 4.0])
