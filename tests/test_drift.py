"""Drift on real data that scikit-learn ships: a shifted copy drifts, a fresh sample does not."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_iris

from mlops_iac.cli import main
from mlops_iac.errors import MlopsIacError
from mlops_iac.monitoring.baseline import baseline, table_baseline
from mlops_iac.monitoring.columns import psi
from mlops_iac.monitoring.drift import CollectedDataError, TooLittleData, check


def collected(
    path: Path, features: np.ndarray, rows_per_record: int = 1, labels: bool = True, model: str = "iris"
) -> Path:
    """Records as the server writes them (orjson: a float32 as its shortest float32 text)."""
    with open(path, "wb") as out:
        for i in range(0, len(features), rows_per_record):
            chunk = features[i : i + rows_per_record]
            record: dict[str, object] = {"model": model, "version": "1", "inputs": {"input": chunk}}
            if labels:
                record["outputs"] = {"label": [0] * len(chunk)}
            out.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE))
    return path


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features = load_breast_cancer(return_X_y=True)[0].astype(np.float32)
    order = np.random.default_rng(0).permutation(len(features))
    return features[order[:280]], features[order[280:]], features


def test_a_shifted_copy_drifts_and_a_fresh_sample_does_not(tmp_path: Path) -> None:
    reference, fresh, _ = split()
    base = baseline(reference, {"label": np.zeros(len(reference))})
    same, records = check(base, [collected(tmp_path / "same.jsonl", fresh)], threshold=0.2)
    assert records == len(fresh)
    assert not any(r.drifted for r in same), [(r.name, r.psi) for r in same if r.drifted]
    shifted = fresh.copy()
    shifted[:, [0, 2, 3]] *= 1.4  # radius, perimeter and area of the tumours: 40% larger
    moved, _ = check(base, [collected(tmp_path / "shifted.jsonl", shifted, rows_per_record=3)], threshold=0.2)
    drifted = {r.name for r in moved if r.drifted}
    assert {"input[0]", "input[2]", "input[3]"} <= drifted
    assert len(drifted) <= 6  # the untouched columns stay calm
    by_name = {r.name: r for r in moved}
    assert by_name["input[0]"].ks > 0.3 and by_name["input[0]"].ks_pvalue < 1e-6
    assert by_name["input[5]"].psi < 0.2


def test_psi_of_equal_distributions_is_zero() -> None:
    counts = np.asarray([10.0, 20.0, 30.0])
    assert psi(counts, counts * 7) == 0.0
    assert psi(counts, counts[::-1]) > 0.5


def test_streaming_holds_no_more_than_bins_and_reservoirs(tmp_path: Path) -> None:
    reference, _, features = split()
    base = baseline(reference, {})

    def peak_of(copies: int) -> tuple[int, int]:
        rows = np.tile(features, (copies, 1))
        path = collected(tmp_path / f"{copies}.jsonl", rows)
        tracemalloc.start()
        results, records = check(base, [path], threshold=0.2)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert records == len(rows) and all(r.count == len(rows) for r in results)
        return peak, path.stat().st_size

    small, _ = peak_of(20)  # 11,380 records: more than one batch
    peak, size = peak_of(200)  # 113,800 records
    assert peak < 1.5 * small and peak < size / 2, f"{peak / 2**20:.0f} MiB peak for {size / 2**20:.0f} MiB"


def test_cli_exits_3_on_drift_and_writes_a_report(converted: Path) -> None:
    sample = np.load(converted / "sample.npy")
    calm = collected(converted / "calm.jsonl", np.tile(sample, (4, 1)), labels=False)
    runner = CliRunner()
    ok = runner.invoke(main, ["monitor", "drift", "iris@1", "--collected", str(calm)])
    assert ok.exit_code == 0, ok.output
    moved = sample.copy()
    moved[:, 2] += 2.0  # petal length, 2 cm longer
    shifted = collected(converted / "shifted.jsonl", np.tile(moved, (4, 1)), labels=False)
    result = runner.invoke(main, ["monitor", "drift", "iris@1", "--collected", str(shifted), "--report", "drift"])
    assert "no drift" in ok.output
    assert result.exit_code == 3, result.output
    assert "input[2]" in result.output and "DRIFT" in result.output
    assert (converted / "drift/psi.png").read_bytes().startswith(b"\x89PNG")
    assert "**drift**" in (converted / "drift/report.md").read_text()


def test_cli_reads_a_folder_of_every_workers_files(converted: Path) -> None:
    """A server with several workers writes requests.jsonl, requests.w1.jsonl, ...: the folder
    is read whole (a shift only in the second worker's file is drift)."""
    sample = np.load(converted / "sample.npy")
    moved = sample.copy()
    moved[:, 2] += 2.0
    folder = converted / "collected"
    folder.mkdir()
    collected(folder / "requests.jsonl", sample, labels=False)
    collected(folder / "requests.w1.jsonl", np.tile(moved, (6, 1)), labels=False)
    result = CliRunner().invoke(main, ["monitor", "drift", "iris@1", "--collected", str(folder)])
    assert result.exit_code == 3, result.output
    assert "input[2]" in result.output and "DRIFT" in result.output


def test_the_same_one_decimal_float32_data_has_a_psi_of_exactly_zero(tmp_path: Path) -> None:
    """Iris: one-decimal values float32 cannot hold exactly, many ties on every bin edge."""
    features = load_iris(return_X_y=True)[0].astype(np.float32)
    labels = np.repeat(np.arange(3, dtype=np.int64), 50)
    base = baseline(features, {"label": labels})
    assert [c["dtype"] for c in base["columns"]] == ["float32"] * 4 + ["int64"]
    assert base["columns"][-1]["kind"] == "categorical" and base["columns"][-1]["categories"] == [0, 1, 2]
    path = tmp_path / "same.jsonl"
    with open(path, "wb") as out:
        for row, label in zip(np.tile(features, (3, 1)), np.tile(labels, 3), strict=True):
            out.write(
                orjson.dumps(
                    {
                        "model": "iris",
                        "version": "1",
                        "inputs": {"input": row[None, :]},
                        "outputs": {"label": [int(label)]},
                    },
                    option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
                )
            )
    results, records = check(base, [path], threshold=0.2, model="iris", version=1)
    assert records == 450
    assert {r.name: r.psi for r in results} == {
        "input[0]": 0.0,
        "input[1]": 0.0,
        "input[2]": 0.0,
        "input[3]": 0.0,
        "label": 0.0,
    }
    assert all(r.ks == 0.0 for r in results)


def test_a_column_of_few_values_is_compared_as_categories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = np.stack([rng.normal(size=600), rng.choice([1.0, 2.0, 3.0], 600, p=[0.6, 0.3, 0.1])], axis=1).astype(
        np.float32
    )
    base = baseline(features, {})
    assert [c["kind"] for c in base["columns"]] == ["numeric", "categorical"]
    flipped = features.copy()
    flipped[:, 1] = 4.0 - flipped[:, 1]  # 1 <-> 3: same values, other shares
    results, _ = check(base, [collected(tmp_path / "f.jsonl", flipped, labels=False)], threshold=0.2)
    by_name = {r.name: r for r in results}
    assert by_name["input[1]"].drifted and by_name["input[1]"].psi > 0.5
    assert by_name["input[0]"].psi == 0.0
    unseen = features.copy()
    unseen[:300, 1] = 7.0  # a value the baseline never had lands in the "other" bin
    results, _ = check(base, [collected(tmp_path / "u.jsonl", unseen, labels=False)], threshold=0.2)
    assert {r.name for r in results if r.drifted} == {"input[1]"}


def _table_records(path: Path, amounts: np.ndarray, colours: list[object], flat: bool = False) -> Path:
    """A table's records as the server writes them: one tensor per column, strings as str."""
    with open(path, "wb") as out:
        for i in range(0, len(colours), 4):
            colour = colours[i : i + 4]
            out.write(
                orjson.dumps(
                    {
                        "model": "paint",
                        "version": "1",
                        "inputs": {
                            "amount": amounts[i : i + 4, None],
                            "colour": colour if flat else [[c] for c in colour],
                        },
                    },
                    option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
                )
            )
    return path


def test_a_string_column_is_compared_by_its_categories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    amounts = rng.normal(size=400).astype(np.float32)
    colours = rng.choice(["red", "green", "blue", ""], 400, p=[0.5, 0.3, 0.15, 0.05]).astype(object)
    base = table_baseline([("amount", amounts), ("colour", colours)], 400, {})
    colour = base["columns"][1]
    assert base["version"] == 3 and base["columns"][0]["dtype"] == "float32"
    assert (colour["dtype"], colour["kind"], colour["categories"]) == (
        "string",
        "categorical",
        ["", "blue", "green", "red"],
    )
    assert colour["counts"][-1] == 0 and sum(colour["counts"]) == 400  # the "other" bin, empty
    assert table_baseline([("amount", amounts)], 400, {})["version"] == 2  # numbers only: as before
    for flat in (False, True):  # [n, 1] rows, or the values flat
        same, _ = check(base, [_table_records(tmp_path / "same.jsonl", amounts, list(colours), flat)], 0.2)
        assert [(r.name, r.kind, r.psi, r.new_categories) for r in same] == [
            ("amount", "numeric", 0.0, 0),
            ("colour", "string", 0.0, 0),
        ]
    shifted = list(colours)
    shifted[::5] = ["purple", "teal"] * 40  # two categories the baseline never had, in 80 rows
    results, _ = check(base, [_table_records(tmp_path / "new.jsonl", amounts, shifted)], 0.2)
    by_name = {r.name: r for r in results}
    assert by_name["amount"].psi == 0.0 and not by_name["amount"].drifted
    new = by_name["colour"]
    assert new.drifted and new.psi > 0.2 and np.isnan(new.ks)
    assert (new.new_categories, new.new_rows, sorted(new.new_examples)) == (2, 80, ["purple", "teal"])
    bad = list(colours)
    bad[41] = 7  # a number where the baseline has strings
    with pytest.raises(CollectedDataError, match=r"bad.jsonl:11: inputs 'colour': values that are not strings"):
        check(base, [_table_records(tmp_path / "bad.jsonl", amounts, bad)], 0.2)
    with pytest.raises(MlopsIacError, match=r"format version 4; this mlops-iac reads versions 1 to 3"):
        check({**base, "version": 4}, [tmp_path / "same.jsonl"], 0.2)


def test_too_little_data_is_an_error_naming_the_count(tmp_path: Path) -> None:
    reference, fresh, _ = split()
    base = baseline(reference, {})
    with pytest.raises(TooLittleData, match=r"40 row\(s\) in 20 record\(s\).*at least 100"):
        check(base, [collected(tmp_path / "few.jsonl", fresh[:40], rows_per_record=2)], threshold=0.2)
    results, _ = check(base, [collected(tmp_path / "few.jsonl", fresh[:40])], threshold=0.2, min_rows=40)
    assert all(r.count == 40 for r in results)


def test_files_that_cannot_be_checked_are_located_errors(tmp_path: Path) -> None:
    reference, fresh, _ = split()
    base = baseline(reference, {})
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(CollectedDataError, match=r"empty.jsonl: empty: no collected records"):
        check(base, [empty], threshold=0.2, model="iris", version=1)
    other = collected(tmp_path / "other.jsonl", fresh, model="cancer")
    with pytest.raises(CollectedDataError, match=r"other.jsonl:1: a record of cancer@1; .* of iris@1"):
        check(base, [other], threshold=0.2, model="iris", version=1)
    with pytest.raises(CollectedDataError, match=r"other.jsonl:1: .* of iris@2"):
        check(base, [collected(tmp_path / "other.jsonl", fresh)], threshold=0.2, model="iris", version=2)
    narrow = collected(tmp_path / "narrow.jsonl", fresh)
    lines = narrow.read_text().splitlines()
    lines[200] = json.dumps({"model": "iris", "version": "1", "inputs": {"input": [fresh[0, :29].tolist()]}})
    narrow.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        CollectedDataError,
        match=r"narrow.jsonl:201: inputs 'input': rows of \[29\] value\(s\); "
        r"the baseline has 30 float32",
    ):
        check(base, [narrow], threshold=0.2, model="iris", version=1)
    lines[200] = json.dumps({"model": "iris", "version": "1", "inputs": {"input": [["a"] * 30]}})
    narrow.write_text("\n".join(lines) + "\n")
    with pytest.raises(CollectedDataError, match=r"narrow.jsonl:201: .*not float32 numbers"):
        check(base, [narrow], threshold=0.2, model="iris", version=1)
    cut = collected(tmp_path / "cut.jsonl", fresh)
    whole = cut.read_bytes()
    cut.write_bytes(whole + b'{"model": "iris", "inp')  # a crash mid-line: the last line is skipped
    assert check(base, [cut], threshold=0.2, model="iris")[1] == len(fresh)
    cut.write_bytes(b'{"model": "iris", "inp\n' + whole)
    with pytest.raises(CollectedDataError, match=r"cut.jsonl:1: not a JSON object"):
        check(base, [cut], threshold=0.2, model="iris")


def test_cli_too_little_data_exits_4(converted: Path) -> None:
    sample = np.load(converted / "sample.npy")
    few = collected(converted / "few.jsonl", sample[:30], labels=False)
    result = CliRunner().invoke(main, ["monitor", "drift", "iris@1", "--collected", str(few)])
    assert result.exit_code == 4, result.output
    assert "30 row(s) in 30 record(s)" in result.output and "at least 100" in result.output


def test_monitoring_drift_baseline_names_the_reference_data(converted: Path) -> None:
    sample = np.load(converted / "sample.npy")
    moved = sample.copy()
    moved[:, 2] += 2.0
    np.save(converted / "reference.npy", moved)
    spec = converted / "mlops.yaml"
    spec.write_text(spec.read_text().replace("monitoring:\n", "monitoring:\n  drift: {baseline: reference.npy}\n", 1))
    shifted = collected(converted / "shifted.jsonl", np.tile(moved, (4, 1)), labels=False)
    runner = CliRunner()
    against_reference = runner.invoke(main, ["monitor", "drift", "iris@1", "--collected", str(shifted), "--json"])
    assert against_reference.exit_code == 0, against_reference.output
    report = json.loads(against_reference.output)
    assert report["baseline"].endswith("reference.npy")
    assert all(c["psi"] == 0.0 for c in report["columns"] if c["name"].startswith("input["))
    against_sample = runner.invoke(
        main, ["monitor", "drift", "iris@1", "--collected", str(shifted), "--baseline", "sample.npy"]
    )
    assert against_sample.exit_code == 3, against_sample.output
