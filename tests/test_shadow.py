"""Shadow traffic on a local target, end to end as a user runs it: `mlops-iac serve` with a
deployment that mirrors 20% of its requests to version 2, a client, the collected records,
and `mlops-iac shadow report`. Answers are checked against in-process onnxruntime."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mlops_iac.cli import main
from mlops_iac.resolve import load

from .conftest import free_port
from .test_rollout import serving

REQUESTS = 2000


def shadow_project(converted: Path, port: int) -> None:
    import joblib
    from sklearn.datasets import load_iris

    spec = yaml.safe_load((converted / "mlops.yaml").read_text())
    spec["targets"]["local"]["port"] = port
    spec["deployments"] = [{**spec["deployments"][0], "name": "iris-live", "shadow": {2: 20}}]
    spec["monitoring"]["dataCollection"]["sampleRate"] = 0.0  # only the mirrored pairs are recorded
    (converted / "mlops.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    x, y = load_iris(return_X_y=True)  # version 2: retrained with a stronger penalty
    model = joblib.load(converted / "model.joblib").set_params(logisticregression__C=0.1)
    joblib.dump(model.fit(x.astype(np.float32), y), converted / "model2.joblib")
    runner = CliRunner()
    for args in (["register", "iris", "--file", "model2.joblib"], ["convert", "iris@2", "--no-speed"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output


def sessions(converted: Path) -> dict[str, object]:
    import onnxruntime as ort

    from mlops_iac.lock import read_lock

    lock = read_lock(converted / "mlops.lock")
    found = {}
    for n in (1, 2):
        onnx = lock.models["iris"].versions[n].onnx
        assert onnx is not None
        path = next((converted / ".mlops/registry").rglob(onnx.digest.removeprefix("sha256:")))
        found[str(n)] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return found


def test_the_server_mirrors_a_share_after_answering_and_the_report_pairs_every_one(converted: Path) -> None:
    from sklearn.datasets import load_iris

    port = free_port()
    shadow_project(converted, port)
    dep = load(converted / "mlops.yaml").resolved.deployments[0]
    assert dep.shadow == {2: 20} and [(v.number, v.weight) for v in dep.versions] == [(1, 100), (2, 0)]
    x = load_iris(return_X_y=True)[0].astype(np.float32)
    models = sessions(converted)
    expected = {v: [s.run(None, {"input": x[i : i + 1]}) for i in range(len(x))] for v, s in models.items()}
    with serving(converted, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(REQUESTS):
            i = n % len(x)
            doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": x[i].tolist()}]}
            if n % 2 == 0:
                doc["id"] = f"req-{n}"  # half name themselves; the server keys the others' records itself
            conn.request("POST", "/v2/models/iris/infer", json.dumps(doc), {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200 and answer["model_version"] == "1", answer  # never the shadow's
            outputs = {o["name"]: o["data"] for o in answer["outputs"]}
            assert outputs["label"] == expected["1"][i][0].ravel().tolist()
            assert answer.get("id") == doc.get("id")
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        conn.close()
    files = list(converted.rglob("requests.jsonl*"))
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    shadow = [r for r in records if r.get("shadow")]
    primary = [r for r in records if r.get("mirrored")]
    assert abs(len(shadow) / REQUESTS - 0.20) <= 0.20 * 0.05, len(shadow)  # the configured share, within 5%
    assert len(primary) == len(shadow) and {r["id"] for r in primary} == {r["id"] for r in shadow}
    assert {r["version"] for r in shadow} == {"2"} and {r["version"] for r in primary} == {"1"}
    assert 'mlops_shadow_mirrored_total{model="iris",version="2"}' in metrics
    for r in shadow:  # the shadow's recorded answers are version 2's, on the very request mirrored
        feeds = next(p for p in primary if p["id"] == r["id"])["inputs"]["input"]
        answer = models["2"].run(None, {"input": np.asarray(feeds, np.float32)})  # type: ignore[attr-defined]
        assert r["outputs"]["label"] == answer[0].ravel().tolist()

    out = converted / "shadow-report"
    result = CliRunner().invoke(
        main, ["shadow", "report", "iris-live", "--collected", str(files[0].parent), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (
        f"{len(shadow)} mirrored requests paired by request id (0 failed in the shadow); unpaired: 0 primary, "
        "0 shadow" in result.output
    )
    paired = [(next(p for p in primary if p["id"] == r["id"])["outputs"], r["outputs"]) for r in shadow]
    agree = np.mean([a["label"] == b["label"] for a, b in paired])
    assert f"| label | label | {agree:.2%} |" in result.output, result.output
    diffs = np.concatenate([np.abs(np.subtract(a["probabilities"], b["probabilities"])).ravel() for a, b in paired])
    assert diffs.max() > 0  # a retrained model: the probabilities move
    assert f"| {diffs.mean():.4g} | {diffs.max():.4g} |" in result.output, result.output
    assert "| primary |" in result.output and "| shadow |" in result.output
    assert (out / "shadow-v2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text() == result.output


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        ('{"model": "iris"\n', "requests.jsonl:1: not a JSON record"),
        ('{"model": "iris", "id": "a", "version": "1", "mirrored": true, "outputs": {}}\n', "no mirrored request"),
    ],
)
def test_shadow_report_errors_are_located(tmp_path: Path, lines: str, said: str) -> None:
    from .test_rollout import project

    file = project(tmp_path, {}, versions=[1])
    data = yaml.safe_load(file.read_text())
    del data["deployments"][0]["rollout"]
    data["deployments"][0] = {**data["deployments"][0], "shadow": {2: 10}}
    file.write_text(yaml.safe_dump(data))
    (tmp_path / "requests.jsonl").write_text(lines)
    result = CliRunner().invoke(
        main,
        [
            "shadow",
            "report",
            "iris-live",
            "-f",
            str(file),
            "--collected",
            str(tmp_path / "requests.jsonl"),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 1 and said in result.output and "Traceback" not in result.output
