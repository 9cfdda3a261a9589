"""Batch scoring: formats, answers against in-process onnxruntime, SIGKILL and resume, rejects."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.convert.onnx_tools import run, session
from mlops_iac.errors import MlopsIacError
from mlops_iac.scoring import ScoringError, Settings, default_workers, engine, prepare, score
from mlops_iac.serving.config import ModelConfig
from mlops_iac.serving.workers import cpu_limit

from .server_fixtures import Models, build_models, model_entry


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("models"))


def cancer_model(models: Models, **extra: object) -> ModelConfig:
    return ModelConfig.model_validate(model_entry(models, "cancer", **extra))


def expected(models: Models, name: str, x: np.ndarray) -> list[np.ndarray]:
    return run(session((models.folder / f"{name}.onnx").read_bytes()), x)


def table_of(x: np.ndarray, ids: np.ndarray) -> pa.Table:
    return pa.table({"patient_id": ids, **{f"f{i:02d}": x[:, i] for i in range(x.shape[1])}})


def write_input(table: pa.Table, path: Path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=97)  # row groups that never align with batches
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    elif path.suffix == ".jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in table.to_pylist()))
    else:
        np.save(path, np.stack([c.to_numpy() for c in table.columns[1:]], axis=1))


def read_output(folder: Path, fmt: str, width: int = 2) -> pa.Table:
    files = sorted(folder.glob(f"part-*.{fmt}"))
    if fmt == "parquet":
        return pq.read_table(files)
    if fmt == "csv":
        table = pa.concat_tables(pacsv.read_csv(f) for f in files)
        probs = np.stack([table.column(f"probabilities_{j}").to_numpy() for j in range(width)], axis=1)
        return table.select([n for n in table.column_names if not n.startswith("probabilities_")]).append_column(
            "probabilities", pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), width)
        )
    rows = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("source", ["parquet", "csv", "jsonl", "npy"])
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_formats_round_trip_and_equal_onnxruntime(models: Models, tmp_path: Path, source: str, fmt: str) -> None:
    x = np.tile(models.cancer, (2, 1))[:1000]
    ids = np.arange(1000, 2000)
    write_input(table_of(x, ids), tmp_path / f"in.{source}")
    job = prepare(
        cancer_model(models),
        models.folder,
        [str(tmp_path / f"in.{source}")],
        tmp_path / "out",
        Settings(batch_size=128, part_rows=300, format=fmt),
    )
    summary = score(job)
    # --part-rows 300 means 384 rows a part: whole batches
    assert (summary.rows_in, summary.rows_out, summary.rejects, summary.parts) == (1000, 1000, 0, 3)
    out = read_output(tmp_path / "out", fmt)
    label, proba = expected(models, "cancer", x)
    key = "row" if source == "npy" else "patient_id"
    np.testing.assert_array_equal(out.column(key).to_numpy(), np.arange(1000) if source == "npy" else ids)
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    got = np.stack(out.column("probabilities").to_pylist()).astype(np.float32)
    # Tree sums differ in the last bits with the batch size and thread count, never more.
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-6)
    if fmt == "parquet":
        meta = pq.read_schema(tmp_path / "out" / "part-00000.parquet").metadata
        assert meta[b"mlops-iac.model"] == b"cancer" and meta[b"mlops-iac.version"] == b"1"
        assert meta[b"mlops-iac.digest"] == cancer_model(models).digest.encode()  # type: ignore[union-attr]


def test_schema_mismatch_is_located_before_any_work(models: Models, tmp_path: Path) -> None:
    x = models.cancer[:50]
    short = table_of(x[:, :29], np.arange(50))
    pq.write_table(short, tmp_path / "short.parquet")
    with pytest.raises(
        MlopsIacError,
        match=r"short.parquet: the model input 'input' takes FP32 \[-1, 30\]: "
        r"30 feature column\(s\).*found 29: f00",
    ):
        prepare(cancer_model(models), models.folder, [str(tmp_path / "short.parquet")], tmp_path / "out", Settings())
    flags = table_of(x, np.arange(50)).set_column(3, "f02", pa.array([True] * 50))
    pq.write_table(flags, tmp_path / "flags.parquet")
    with pytest.raises(
        MlopsIacError,
        match=r"flags.parquet: column 'f02' is bool; the model input 'input' "
        r"expects FP32 \[-1, 30\] of float32",
    ):
        prepare(cancer_model(models), models.folder, [str(tmp_path / "flags.parquet")], tmp_path / "out", Settings())
    assert not (tmp_path / "out").exists()
    with pytest.raises(MlopsIacError, match="no file matches"):
        prepare(cancer_model(models), models.folder, [str(tmp_path / "*.csv")], tmp_path / "out", Settings())


def test_rejects_with_reasons_and_the_threshold(models: Models, tmp_path: Path) -> None:
    x = models.cancer[:40]
    table = table_of(x, np.arange(40)).cast(
        pa.schema([("patient_id", pa.int64())] + [(f"f{i:02d}", pa.string()) for i in range(30)])
    )
    for row, value in ((3, "abc"), (17, None), (39, "1e")):
        table = table.set_column(
            5, "f04", pa.array([value if i == row else v for i, v in enumerate(table.column("f04").to_pylist())])
        )
    pacsv.write_csv(table, tmp_path / "bad.csv")  # three bad cells
    lines = (b'{"patient_id": 1, "f00": "x"}\n', b"not json\n")
    good = [
        orjson.dumps({"patient_id": i, **{f"f{j:02d}": float(x[i, j]) for j in range(30)}}) + b"\n" for i in range(5)
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"".join(good[:2]) + lines[1] + b"".join(good[2:]) + lines[0])
    with pytest.raises(ScoringError, match="3 rejected rows exceed --error-threshold 2"):
        score(
            prepare(
                cancer_model(models),
                models.folder,
                [str(tmp_path / "bad.csv")],
                tmp_path / "strict",
                Settings(batch_size=16, part_rows=16, error_threshold=2),
            )
        )
    manifest = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert manifest["summary"]["status"] == "failed" and manifest["summary"]["rejects"] == 3
    summary = score(
        prepare(
            cancer_model(models),
            models.folder,
            [str(tmp_path / "bad.csv"), str(tmp_path / "bad.jsonl")],
            tmp_path / "out",
            Settings(batch_size=16, part_rows=16, error_threshold=5),
        )
    )
    assert summary.rows_in == 47 == summary.rows_out + summary.rejects and summary.rejects == 5
    rejects = pq.read_table(sorted((tmp_path / "out").glob("rejects-*.parquet"))).to_pylist()
    assert [(r["patient_id"], r["row"]) for r in rejects] == [(3, 3), (17, 17), (39, 39), (None, 2), (1, 6)]
    reasons = [r["reason"] for r in rejects]
    assert "column 'f04': 'abc' is not float" in reasons[0] and reasons[1] == "column 'f04': missing value"
    assert reasons[3].startswith("line 3: not JSON") and "column 'f00': got str 'x'" in reasons[4]
    scored = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet")))
    kept = [i for i in range(40) if i not in (3, 17, 39)]
    assert scored.column("patient_id").to_pylist()[:37] == kept
    np.testing.assert_array_equal(scored.column("label").to_numpy()[:37], expected(models, "cancer", x[kept])[0])


def test_handler_refusals_are_rejects(models: Models, tmp_path: Path) -> None:
    (models.folder / "batch_handler.py").write_text(
        "import numpy as np\n"
        "def preprocess(request):\n"
        "    x = request.inputs['cm']\n"
        "    if x.shape[-1] != 4: raise ValueError('expected 4 measurements in cm')\n"
        "    if (x < 0).any(): raise ValueError('a negative measurement')\n"
        "    return {'input': x.astype(np.float32)}\n"
        "def postprocess(outputs):\n"
        "    names = np.array(['setosa', 'versicolor', 'virginica'], dtype=object)\n"
        "    return {'species': names[outputs['label']]}\n"
    )
    x = models.iris.copy()
    x[[5, 77], 2] = -1.0
    pq.write_table(
        pa.table({"id": np.arange(150), "cm": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)}),
        tmp_path / "iris.parquet",
    )
    model = ModelConfig.model_validate(model_entry(models, "iris", handler="batch_handler.py"))
    summary = score(
        prepare(
            model,
            models.folder,
            [str(tmp_path / "iris.parquet")],
            tmp_path / "out",
            Settings(batch_size=32, error_threshold=-1),
        )
    )
    assert (summary.rows_out, summary.rejects) == (148, 2)
    out = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    kept = [i for i in range(150) if i not in (5, 77)]
    names = np.array(["setosa", "versicolor", "virginica"])[expected(models, "iris", models.iris[kept])[0]]
    assert out.column("species").to_pylist() == names.tolist() and out.column("id").to_pylist() == kept
    rejects = pq.read_table(tmp_path / "out" / "rejects-00000.parquet").to_pylist()
    assert [r["id"] for r in rejects] == [5, 77]
    assert rejects[0]["reason"] == "the model's handler refused the request: a negative measurement"


@pytest.mark.parametrize("handler", [None, "identity_handler.py"])
def test_two_workers_give_the_same_bytes(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handler: str | None
) -> None:
    """Lanes are threads of this process; with a handler (Python, which holds the GIL) the second
    is a process. Either way the parts are the bytes one lane writes."""
    (models.folder / "identity_handler.py").write_text(  # the file's 30 columns become the model's input
        "import numpy as np\n"
        "def preprocess(request):\n"
        "    return {'input': np.stack([request.inputs[f'f{i:02d}'] for i in range(30)], axis=1)}\n"
    )
    pools: list[int] = []
    real = engine.ProcessPoolExecutor

    def counted(workers: int, **kwargs: Any) -> Any:
        pools.append(workers)
        return real(workers, **kwargs)

    monkeypatch.setattr(engine, "ProcessPoolExecutor", counted)
    x = np.tile(models.cancer, (4, 1))
    pq.write_table(table_of(x, np.arange(len(x))), tmp_path / "in.parquet")
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        score(
            prepare(
                cancer_model(models, handler=handler),
                models.folder,
                [str(tmp_path / "in.parquet")],
                out,
                Settings(batch_size=200, part_rows=400, workers=workers, threads=1),
            )
        )
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert len(outs[0]) == 7 and outs[0] == outs[1]  # 6 parts and the manifest
    assert pools == ([1] if handler else [])


def test_a_failed_write_is_the_error_and_its_part_is_never_committed(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part's commit queues behind its last write: when a write fails, the run ends with that
    write's error, the part stays uncommitted, and the parts before it stay done."""
    from mlops_iac.scoring import writers

    pq.write_table(table_of(models.cancer, np.arange(len(models.cancer))), tmp_path / "in.parquet")
    real, calls = writers.PartWriter.write, []

    def failing(self: Any, ids: pa.Table, outputs: dict[str, np.ndarray]) -> None:
        calls.append(self.path.name)
        if len(calls) == 4:  # the last batch of the second part
            raise OSError(28, "No space left on device")
        real(self, ids, outputs)

    monkeypatch.setattr(writers.PartWriter, "write", failing)
    settings = Settings(batch_size=50, part_rows=100, threads=1)
    job = prepare(cancer_model(models), models.folder, [str(tmp_path / "in.parquet")], tmp_path / "out", settings)
    with pytest.raises(OSError, match="No space left on device"):
        score(job)
    assert calls[3] == "part-00001.parquet"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [p["status"] for p in manifest["parts"][:2]] == ["done", "pending"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "part-00000.parquet"]


def test_a_lane_failing_while_the_run_waits_gives_its_own_error(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only lane fails while the main thread waits for its next event: the run ends with the
    lane's error, not with one about events that never came (found by review)."""
    from mlops_iac.scoring import writers

    pq.write_table(table_of(models.cancer, np.arange(len(models.cancer))), tmp_path / "in.parquet")

    def failing(self: Any, ids: pa.Table, outputs: dict[str, np.ndarray]) -> None:
        time.sleep(0.5)  # a slow disk: longer than the main thread's wait for an event
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writers.PartWriter, "write", failing)
    settings = Settings(batch_size=50, part_rows=100, threads=1, workers=1)
    job = prepare(cancer_model(models), models.folder, [str(tmp_path / "in.parquet")], tmp_path / "out", settings)
    with pytest.raises(OSError, match="Input/output error"):
        score(job)


def test_a_failed_lane_ends_the_run_while_the_others_score(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part that fails stops every lane at its next batch; the other lane does not score the
    remaining parts first. 18 parts of 30 one-row batches; part 1 fails at its first write."""
    from mlops_iac.scoring import writers

    pq.write_table(table_of(models.cancer[:540], np.arange(540)), tmp_path / "in.parquet")
    real = writers.PartWriter.write

    def failing(self: Any, ids: pa.Table, outputs: dict[str, np.ndarray]) -> None:
        if self.path.name == "part-00001.parquet":
            raise OSError(5, "Input/output error")
        real(self, ids, outputs)

    monkeypatch.setattr(writers.PartWriter, "write", failing)
    settings = Settings(batch_size=1, part_rows=30, workers=2, threads=1)
    job = prepare(cancer_model(models), models.folder, [str(tmp_path / "in.parquet")], tmp_path / "out", settings)
    with pytest.raises(OSError, match="Input/output error"):
        score(job)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["summary"]["parts"] == 18 and manifest["summary"]["parts_done"] < 9
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_scoring_numbers_never_imports_pandas(models: Models, tmp_path: Path) -> None:
    """pyarrow's own conversions import pandas where it is installed (half a second of each
    run's start-up); a Parquet run of number columns goes through the buffers instead."""
    pq.write_table(table_of(models.cancer, np.arange(len(models.cancer))), tmp_path / "in.parquet")
    script = (
        "import sys; from pathlib import Path\n"
        "from mlops_iac.scoring import Settings, prepare, score\n"
        "from mlops_iac.serving.config import ModelConfig\n"
        "model = ModelConfig.model_validate_json(sys.argv[1])\n"
        "job = prepare(model, Path(sys.argv[2]), [sys.argv[3]], Path(sys.argv[4]), Settings(batch_size=100))\n"
        "assert score(job).rows_out == 569\n"
        "print('pandas' in sys.modules)\n"
    )
    args = [cancer_model(models).model_dump_json(), str(models.folder), str(tmp_path / "in.parquet")]
    done = subprocess.run(
        [sys.executable, "-c", script, *args, str(tmp_path / "out")], check=True, capture_output=True, text=True
    )
    assert done.stdout.strip() == "False"


def test_workers_times_threads_fit_the_cpus(models: Models, tmp_path: Path) -> None:
    """Each worker gets the CPUs this process may use (its CFS quota, else its affinity)
    divided by the workers, so onnxruntime's threads never outnumber the cores; --threads wins."""
    pq.write_table(table_of(models.cancer[:10], np.arange(10)), tmp_path / "in.parquet")
    inputs, limit = [str(tmp_path / "in.parquet")], cpu_limit()
    for workers in (1, 2, limit + 1):
        job = prepare(cancer_model(models), models.folder, inputs, tmp_path / "out", Settings(workers=workers))
        assert job.model.threads == max(1, limit // workers)
        assert job.model.threads * workers <= max(limit, workers)
    job = prepare(cancer_model(models), models.folder, inputs, tmp_path / "out", Settings(workers=2, threads=3))
    assert job.model.threads == 3


def test_workers_default_to_one_per_four_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --workers, one lane per 4 CPUs this process may use (its quota, else its
    affinity), at least one: the figures measured on 16 and 2 cores (see CPUS_PER_WORKER)."""
    seen = {}
    for cpus in (1, 2, 7, 8, 16, 33):
        monkeypatch.setattr(engine, "cpu_limit", lambda cpus=cpus: cpus)
        seen[cpus] = default_workers()
    assert seen == {1: 1, 2: 1, 7: 1, 8: 2, 16: 4, 33: 8}
    # --threads without --workers: as many workers as fit, never more threads than CPUs.
    assert (default_workers(8), default_workers(3), default_workers(64)) == (4, 11, 1)  # 33 CPUs


def _entrypoint(models: Models, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    config = models.folder / "batch-server.json"  # beside the model, as in the image
    config.write_text(json.dumps({"models": [model_entry(models, "cancer")]}))
    return [
        sys.executable,
        "-m",
        "mlops_iac.scoring",
        "--config",
        str(config),
        "--input",
        str(tmp_path / "in-*.parquet"),
        "--output",
        str(out),
        "--batch-size",
        "10",
        "--part-rows",
        "500",
        "--threads",
        "1",
        "--resume",
        *extra,
    ]


def _done_parts(manifest: Path) -> int:
    try:
        return int(json.loads(manifest.read_text())["summary"]["parts_done"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.integration
def test_sigkill_then_resume_gives_identical_bytes(models: Models, tmp_path: Path) -> None:
    # 11,380 rows in two files: 24 parts of 50 small batches, so that a kill lands inside one
    x = np.tile(models.cancer, (20, 1))
    for i, half in enumerate(np.array_split(np.arange(len(x)), 2)):
        pq.write_table(table_of(x[half], half), tmp_path / f"in-{i}.parquet")
    reference = tmp_path / "reference"
    subprocess.run(_entrypoint(models, tmp_path, reference), check=True, capture_output=True)
    want = {p.name: p.read_bytes() for p in sorted(reference.iterdir())}
    assert len(want) == 25
    chance = random.Random(22)
    for k, after in enumerate((0, 4, 9, 15)):
        out = tmp_path / f"killed-{k}"
        lanes = ("--workers", str(1 + k % 2))  # a kill amid two lanes' parts too; the resume has one
        process = subprocess.Popen(
            _entrypoint(models, tmp_path, out, *lanes), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while _done_parts(out / "manifest.json") < after and process.poll() is None:
            time.sleep(0.001)
        time.sleep(chance.uniform(0, 0.01))  # somewhere inside a later part
        process.send_signal(signal.SIGKILL)
        process.wait()
        done = _done_parts(out / "manifest.json")
        assert done < 24, "the run finished before the kill; nothing was tested"
        resumed = subprocess.run(_entrypoint(models, tmp_path, out), check=True, capture_output=True, text=True)
        assert json.loads(resumed.stdout)["resumed_parts"] == done
        assert not list(out.glob(".*.tmp"))
        assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == want, f"kill after {after} parts"


def test_resume_rescores_parts_torn_on_disk(models: Models, tmp_path: Path) -> None:
    """Parts are not fsynced one by one: after a power cut a part the manifest lists may be
    short or empty. --resume trusts only parts whose digest matches, and the result is the
    uninterrupted run's bytes."""
    pq.write_table(table_of(models.cancer, np.arange(len(models.cancer))), tmp_path / "in.parquet")
    settings = Settings(batch_size=50, part_rows=100, threads=1)
    inputs = [str(tmp_path / "in.parquet")]
    reference = tmp_path / "reference"
    score(prepare(cancer_model(models), models.folder, inputs, reference, settings))
    want = {p.name: p.read_bytes() for p in sorted(reference.iterdir())}
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "part-00001.parquet").write_bytes(want["part-00001.parquet"][:100])
    (out / "part-00004.parquet").write_bytes(b"")
    resumed = score(prepare(cancer_model(models), models.folder, inputs, out, replace(settings, resume=True)))
    assert resumed.skipped == resumed.parts - 2 and resumed.rows_out == len(models.cancer)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == want


def test_the_manifest_says_complete_only_after_the_parts_are_durable(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that trusts "complete" must never read a part a power cut could tear: while the
    parts are made durable (fsynced) the manifest still says "running"; after, "complete"."""
    from mlops_iac.scoring import engine

    pq.write_table(table_of(models.cancer, np.arange(len(models.cancer))), tmp_path / "in.parquet")
    out = tmp_path / "out"
    seen: list[str] = []
    durable = engine.make_durable

    def observed(folder: Path, results: Any) -> None:  # the real fsyncs, and what a reader sees then
        seen.append(json.loads((folder / "manifest.json").read_text())["summary"]["status"])
        durable(folder, results)

    monkeypatch.setattr(engine, "make_durable", observed)
    settings = Settings(batch_size=50, part_rows=100, threads=1)
    score(prepare(cancer_model(models), models.folder, [str(tmp_path / "in.parquet")], out, settings))
    assert seen == ["running"]
    assert json.loads((out / "manifest.json").read_text())["summary"]["status"] == "complete"


def test_a_stopped_part_is_abandoned_at_its_next_batch(models: Models, tmp_path: Path) -> None:
    """Ctrl-C or a failed part elsewhere sets the stop: the lane here ends at its next batch, with
    nothing committed, instead of scoring its part to the end first."""
    import threading

    from mlops_iac.scoring.engine import parts
    from mlops_iac.scoring.part import score_lane

    pq.write_table(table_of(models.cancer, np.arange(len(models.cancer))), tmp_path / "in.parquet")
    settings = Settings(batch_size=50, part_rows=10_000, threads=1)
    job = prepare(cancer_model(models), models.folder, [str(tmp_path / "in.parquet")], tmp_path / "out", settings)
    (tmp_path / "out").mkdir()
    stop = threading.Event()
    batches: list[int] = []
    claims = iter(parts(job))

    def emit(kind: str, value: Any) -> None:
        assert kind == "rows", "no part may finish"
        batches.append(value)
        stop.set()  # as the main thread does on Ctrl-C, while the part is being scored

    with pytest.raises(MlopsIacError, match="part-00000: stopped before it was complete"):
        score_lane(job, lambda: next(claims, None), emit, stop)
    assert len(batches) <= 2  # the batch written when the stop came, and the one in flight
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_rerun_refuses_without_resume_and_other_inputs(models: Models, tmp_path: Path) -> None:
    pq.write_table(table_of(models.cancer[:100], np.arange(100)), tmp_path / "a.parquet")
    settings = Settings(batch_size=50)
    score(prepare(cancer_model(models), models.folder, [str(tmp_path / "a.parquet")], tmp_path / "out", settings))
    with pytest.raises(MlopsIacError, match="pass --resume to finish it"):
        score(prepare(cancer_model(models), models.folder, [str(tmp_path / "a.parquet")], tmp_path / "out", settings))
    pq.write_table(table_of(models.cancer[:99], np.arange(99)), tmp_path / "a.parquet")
    with pytest.raises(MlopsIacError, match="holds a run with other inputs"):
        score(
            prepare(
                cancer_model(models),
                models.folder,
                [str(tmp_path / "a.parquet")],
                tmp_path / "out",
                Settings(batch_size=50, resume=True),
            )
        )


def test_a_resume_on_another_thread_count_is_refused(models: Models, tmp_path: Path) -> None:
    """A tree ensemble sums in another order on another onnxruntime thread count, so its parts
    differ in their last bits: a resume with another count (another machine's CPUs, another
    --workers) would mix them. It is refused, naming the count; the same count resumes."""
    pq.write_table(table_of(models.cancer[:100], np.arange(100)), tmp_path / "a.parquet")
    inputs, out = [str(tmp_path / "a.parquet")], tmp_path / "out"
    score(prepare(cancer_model(models), models.folder, inputs, out, Settings(batch_size=50, threads=1)))
    other = Settings(batch_size=50, threads=2, resume=True)
    with pytest.raises(MlopsIacError) as refused:
        score(prepare(cancer_model(models), models.folder, inputs, out, other))
    # Names the setting that differs, stored against given, and what sets it; not the whole dict.
    assert "holds a run with other settings: threads stored 1, given 2 (from --threads" in str(refused.value)
    assert "batch_size" not in str(refused.value)
    again = score(prepare(cancer_model(models), models.folder, inputs, out, replace(other, threads=1)))
    assert again.rows_in == 100


def test_cli_scores_a_registered_version(converted: Path) -> None:
    from sklearn.datasets import load_iris

    x = load_iris().data.astype(np.float32)
    pq.write_table(
        pa.table({"flower_id": np.arange(150), **{f"x{i}": x[:, i] for i in range(4)}}), converted / "flowers.parquet"
    )
    result = CliRunner().invoke(
        main,
        [
            "score",
            "iris@1",
            "--input",
            "flowers.parquet",
            "--output",
            "scored",
            "--batch-size",
            "64",
            "--summary",
            "summary.md",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows_out"] == 150
    out = pq.read_table(converted / "scored" / "part-00000.parquet")
    onnx = next((converted / ".mlops" / "serve").glob("*.onnx"))
    label = run(session(onnx.read_bytes()), x)[0]
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    assert out.column("flower_id").to_pylist() == list(range(150))
    assert "| 150 | 150 | 0 | 1 | 0 |" in (converted / "summary.md").read_text()
    bad = CliRunner().invoke(main, ["score", "iris@1", "--input", "nope.csv", "--output", "x"])
    assert bad.exit_code == 1 and "--input nope.csv: no such file" in bad.output


def test_score_action_runs_as_on_a_runner(converted: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_iris

    from .test_actions import run_action

    x = load_iris().data.astype(np.float32)
    (converted / "customers").mkdir()
    for i, half in enumerate(np.array_split(np.arange(150), 2)):
        pq.write_table(
            pa.table({"id": half, **{f"x{j}": x[half, j] for j in range(4)}}), converted / "customers" / f"{i}.parquet"
        )
    summary = tmp_path / "summary.md"
    outputs = run_action(
        "score",
        {"ref": "iris@1", "input": "customers/*.parquet\n", "output": "scores", "batch-size": "50"},
        converted,
        summary,
    )
    assert outputs["rows-out"] == "150" and outputs["rejects"] == "0"
    assert json.loads((converted / outputs["manifest"]).read_text())["summary"]["status"] == "complete"
    assert "### Batch scoring with iris@1: complete" in summary.read_text()
    assert "| 150 | 150 | 0 | 2 | 0 |" in summary.read_text()


def test_a_local_batch_deployment_is_the_command_itself(converted: Path) -> None:
    from sklearn.datasets import load_iris

    x = load_iris().data.astype(np.float32)
    (converted / "in").mkdir()
    pq.write_table(
        pa.table({"id": np.arange(150), **{f"x{j}": x[:, j] for j in range(4)}}), converted / "in" / "flowers.parquet"
    )
    spec = converted / "mlops.yaml"
    spec.write_text(
        spec.read_text().replace(
            "\nmonitoring:",
            (
                "\n  - name: iris-nightly\n    kind: batch\n    model: iris\n    version: 1\n    target: local\n"
                "    batch: {input: [in/*.parquet], output: out, batchSize: 32, partRows: 64}\n"
                "\nmonitoring:"
            ),
            1,
        )
    )
    result = CliRunner().invoke(main, ["score", "--deployment", "iris-nightly", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parts"] == 3  # 150 rows, 64 a part
    out = pq.read_table(sorted((converted / "out").glob("part-*.parquet")))
    onnx = next((converted / ".mlops" / "serve").glob("*.onnx"))
    np.testing.assert_array_equal(out.column("label").to_numpy(), run(session(onnx.read_bytes()), x)[0])
    unknown = CliRunner().invoke(main, ["score", "--deployment", "iris-local"])
    assert unknown.exit_code == 1 and "batch deployments: iris-nightly" in unknown.output


def test_every_missing_tabular_column_is_named_at_once(tmp_path: Path) -> None:
    from mlops_iac.errors import MlopsIacError
    from mlops_iac.scoring.features import plan_inputs
    from mlops_iac.serving.runtime import TensorSpec

    columns = ["island", "bill_length", "bill_depth", "flipper", "mass", "sex"]
    inputs = {c: TensorSpec(c, "FP32" if c not in ("island", "sex") else "BYTES", (-1, 1)) for c in columns}
    schema = pa.schema([("id", pa.int64()), ("island", pa.string())])  # five of six columns missing
    with pytest.raises(MlopsIacError) as raised:
        plan_inputs(tmp_path / "in.parquet", schema, inputs, ["id"], False)
    message = str(raised.value)
    for name in columns[1:]:
        assert repr(name) in message, message
    assert "'island'" not in message.split("; columns:")[0] and message.endswith("columns: id, island")


def test_cli_progress_is_whole_lines_off_a_terminal_and_a_full_resume_has_no_rate(converted: Path) -> None:
    x = np.tile(np.load(converted / "sample.npy"), (20, 1)).astype(np.float32)
    pq.write_table(pa.table({f"x{i}": x[:, i] for i in range(4)}), converted / "rows.parquet")
    args = ["score", "iris@1", "--input", "rows.parquet", "--output", "scored", "--batch-size", "100"]
    first = CliRunner().invoke(main, args)  # its output is not a terminal, as in a CI log
    assert first.exit_code == 0, first.output
    lines = first.stdout.splitlines()
    assert "\r" not in first.stdout and "\x1b" not in first.stdout
    assert lines[-2] == f"scoring iris@1: {len(x):,}/{len(x):,} rows (100%)"
    assert all(line.startswith("scoring iris@1: ") for line in lines[:-1]) and len(lines) > 2
    assert re.search(r", [\d,]+ rows/s; manifest", lines[-1])
    again = CliRunner().invoke(main, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "(1 already done); manifest" in again.stdout and "rows/s" not in again.stdout
