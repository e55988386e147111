"""The calibration runner and ``pocsdk calibrate``: valid LabelRecords, resume without duplicates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pocsdk.calibration import runner
from pocsdk.calibration.datasets import Example, load_dataset
from pocsdk.calibration.labels import read_labels
from pocsdk.calibration.runner import check_factors, done_ids, run_calibration
from pocsdk.cli import app
from pocsdk.errors import ConfigError, InvalidRateError, PocError, RemoteError

FACTORS = [1.0, 2.0, 4.0, 8.0]

SENTENCES = [
    "The Amazon river flows through Brazil and carries more water than any other river.",
    "Its basin covers about seven million square kilometres of rainforest.",
    "The first European to descend the river was Francisco de Orellana in 1542.",
    "Many tributaries join the main stream, among them the Negro and the Madeira.",
    "Fishing and river transport support the towns along its banks.",
    "Deforestation has shrunk the forest in recent decades, worrying scientists.",
]


def examples(n: int = 6) -> list[Example]:
    text = " ".join(SENTENCES * 3)
    out = []
    for i in range(n):
        out.append(Example(id=f"e{i}", dataset="toy", task="qa", context=text,
                           query="Who first descended the Amazon river?", answers=["Francisco de Orellana"]))
    out.append(Example(id="sum", dataset="toy", task="summarization", context=text,
                       reference="The Amazon river basin is a rainforest threatened by deforestation."))
    out.append(Example(id="nogold", dataset="toy", task="qa", context=text, query="Who?", answers=["Magellan"]))
    return out


def write_jsonl(path: Path, items: list[Example]) -> Path:
    path.write_text("".join(e.model_dump_json() + "\n" for e in items), encoding="utf-8")
    return path


def test_run_writes_valid_records_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    stats = run_calibration(examples(), out, compressor="extractive", factors=FACTORS, workers=1, progress=False)
    assert (stats.total, stats.written, stats.unscorable, stats.failed) == (8, 7, 1, 0)
    records = read_labels(out)
    assert [r.id for r in records] == [*(f"e{i}" for i in range(6)), "sum"]
    for r in records:
        assert r.factors == FACTORS and len(r.performance) == 4 and r.performance[0] == 1.0
        assert all(0.0 <= p <= 1.0 for p in r.performance)
        assert r.achieved_factors[0] == pytest.approx(1.0) and r.achieved_factors[-1] > 4.0
        assert r.original_tokens > 64 and r.compressor == "extractive" and r.judge == "retention"
        assert r.metadata["features"] in ("ok", "missing")
        if r.metadata["features"] == "ok":
            assert len(r.factor_features) == 4 and r.context_features
    assert records[-1].metadata["judge"]["mode"] == "recall"
    lines = out.read_text().splitlines()
    assert json.loads(lines[-1])["error"]["type"] == "unscorable"

    # resume: nothing new to do, nothing duplicated; then two more examples are appended
    again = run_calibration(examples(), out, compressor="extractive", factors=FACTORS, workers=1, resume=True,
                            progress=False)
    assert again.skipped == 8 and again.written == 0
    more = [*examples(), *(Example(id=f"x{i}", dataset="toy", task="qa", context=" ".join(SENTENCES * 2),
                                   query="Which rivers join?", answers=["Madeira"]) for i in range(2))]
    third = run_calibration(more, out, compressor="extractive", factors=FACTORS, workers=1, resume=True,
                            progress=False)
    assert third.skipped == 8 and third.written == 2
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 10
    # resuming with another compressor or grid would mix two kinds of labels in one file: refused
    before = out.read_bytes()
    with pytest.raises(ConfigError, match="compressor 'extractive'"):
        run_calibration(more, out, compressor="skim", factors=FACTORS, workers=1, resume=True, progress=False)
    with pytest.raises(ConfigError, match="factors"):
        run_calibration(more, out, compressor="extractive", factors=[1.0, 2.0], workers=1, resume=True,
                        progress=False)
    assert out.read_bytes() == before


def test_resume_under_a_registered_alias(tmp_path: Path) -> None:
    from pocsdk.compressors import register
    from pocsdk.compressors.extractive import ExtractiveCompressor

    register("extractive-alias", lambda **kw: ExtractiveCompressor(**kw))  # records say "extractive"
    out = tmp_path / "l.jsonl"
    run_calibration(examples(2), out, compressor="extractive-alias", factors=FACTORS, workers=1, progress=False)
    again = run_calibration(examples(3), out, compressor="extractive-alias", factors=FACTORS, workers=1,
                            resume=True, progress=False)
    assert again.skipped == 4 and again.written == 1  # examples(n) adds two more to its n


def test_bad_options_fail_before_the_output_is_touched(tmp_path: Path) -> None:
    out = tmp_path / "l.jsonl"
    run_calibration(examples(1), out, compressor="extractive", factors=FACTORS, workers=1, progress=False)
    before = out.read_bytes()
    for kwargs in ({"compressor": "nope"}, {"compressor_params": {"skim_shar": 0.2}}, {"judge": "bogus"}):
        with pytest.raises(PocError):
            run_calibration(examples(2), out, factors=FACTORS, workers=2, overwrite=True, progress=False,
                            **kwargs)  # type: ignore[arg-type]
        assert out.read_bytes() == before  # --overwrite did not wipe the old labels


def test_run_refuses_to_overwrite_and_checks_args(tmp_path: Path) -> None:
    out = tmp_path / "l.jsonl"
    out.write_text("")
    with pytest.raises(ConfigError, match="--resume"):
        run_calibration(examples(1), out, progress=False)
    run_calibration(examples(1), out, factors=FACTORS, overwrite=True, workers=1, progress=False)
    assert [r.id for r in read_labels(out)] == ["e0", "sum"]
    with pytest.raises(InvalidRateError):
        check_factors([1, 0.5])
    with pytest.raises(InvalidRateError):
        check_factors([2, 1])
    with pytest.raises(ConfigError, match="twice"):
        run_calibration([*examples(1), *examples(1)], tmp_path / "d.jsonl", workers=1, progress=False)


def test_done_ids_cuts_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "l.jsonl"
    out.write_bytes(b'{"id": "a", "error": {"type": "x"}}\n{"id": "b", "perf')
    assert done_ids(out) == {"a"}
    assert out.read_bytes() == b'{"id": "a", "error": {"type": "x"}}\n'


def test_failures_become_error_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> object:
        raise RuntimeError("featurize broke")

    monkeypatch.setattr(runner, "load_featurize", lambda: boom)
    out = tmp_path / "l.jsonl"
    stats = run_calibration(examples(1), out, factors=FACTORS, workers=1, progress=False)
    assert stats.written == 2  # labels survive a featurizer failure, flagged
    rec = read_labels(out)[0]
    assert rec.metadata["features"].startswith("error: RuntimeError") and rec.context_features == {}

    monkeypatch.setattr(runner, "load_featurize", lambda: None)
    out2 = tmp_path / "l2.jsonl"
    run_calibration(examples(1), out2, factors=FACTORS, workers=1, progress=False)
    assert read_labels(out2)[0].metadata["features"] == "missing"

    out3 = tmp_path / "l3.jsonl"
    bad = Example(id="big", dataset="toy", task="qa", context="x " * 10, query="q", answers=["x"])
    stats = run_calibration([bad], out3, compressor="extractive", compressor_params={"max_input_chars": 5},
                            factors=FACTORS, workers=1, progress=False)
    assert stats.failed == 1 and stats.errors == {"InputTooLargeError": 1}
    assert read_labels(out3) == []


def test_retry_failed_runs_failed_examples_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = runner.label_example
    calls: list[str] = []

    def flaky(example: Example, *args: Any, **kwargs: Any) -> Any:  # the endpoint is down for e1 the first time
        calls.append(example.id)
        if example.id == "e1" and calls.count("e1") == 1:
            raise RemoteError("503 from the LLM endpoint")
        return real(example, *args, **kwargs)

    monkeypatch.setattr(runner, "label_example", flaky)
    out = tmp_path / "l.jsonl"
    first = run_calibration(examples(2), out, compressor="extractive", factors=FACTORS, workers=1, progress=False)
    assert first.failed == 1 and first.unscorable == 1
    with pytest.raises(ConfigError, match="--resume"):
        run_calibration(examples(2), out, compressor="extractive", factors=FACTORS, workers=1, progress=False,
                        retry_failed=True, overwrite=True)
    plain = run_calibration(examples(2), out, compressor="extractive", factors=FACTORS, workers=1, progress=False,
                            resume=True)
    assert plain.written == 0  # a plain resume keeps the failure
    again = run_calibration(examples(2), out, compressor="extractive", factors=FACTORS, workers=1, progress=False,
                            resume=True, retry_failed=True)
    assert (again.retried, again.written, again.failed) == (1, 1, 0)
    assert sorted(r.id for r in read_labels(out)) == ["e0", "e1", "sum"]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    # only appended to: the old failure line stays (readers skip it), the retried record follows it
    assert [x["id"] for x in lines] == ["e0", "e1", "sum", "nogold", "e1"] and "error" not in lines[-1]
    done = run_calibration(examples(2), out, compressor="extractive", factors=FACTORS, workers=1, progress=False,
                           resume=True, retry_failed=True)
    assert (done.retried, done.written) == (0, 0)  # e1 has succeeded since


def test_two_workers_keep_input_order(tmp_path: Path) -> None:
    out = tmp_path / "l.jsonl"
    stats = run_calibration(examples(), out, compressor="skim", factors=FACTORS, workers=2, progress=False)
    assert stats.written == 7
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [e.id for e in examples()]


def test_cli_end_to_end_and_resume(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "toy.jsonl", examples(3))
    out = tmp_path / "labels.jsonl"
    args = ["calibrate", "--dataset", f"jsonl:{data}", "--compressor", "extractive", "--judge", "retention",
            "-o", str(out), "--factors", "1,2,4", "--workers", "1", "--quiet"]
    cli = CliRunner()
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["written"] == 4
    assert len(read_labels(out)) == 4
    res = cli.invoke(app, args)
    assert res.exit_code == 2 and "--resume" in res.output  # a bad option: 2 (was 1)
    res = cli.invoke(app, [*args, "--resume", "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 5  # 4 labels + 1 unscorable, no duplicates
    res = cli.invoke(app, [*args[:-1], "--factors", "1,x"])
    assert res.exit_code == 2


def test_real_data_tiny_subset(shared_data: Path, tmp_path: Path) -> None:
    ex = load_dataset("nq_mixed:n=4", root=shared_data) + load_dataset("multi_news:n=2", root=shared_data)
    out = tmp_path / "l.jsonl"
    stats = run_calibration(ex, out, compressor="skim", workers=1, progress=False)
    assert stats.written == 6
    recs = read_labels(out)
    assert {r.task for r in recs} == {"multi_doc_qa", "summarization"}
    assert all(len(r.factors) == 10 for r in recs)


def test_runner_with_llm_judge_on_fake_endpoint(tmp_path: Path) -> None:
    import httpx

    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        user = json.loads(request.content)["messages"][-1]["content"]
        answer = "Francisco de Orellana" if "Orellana" in user else "unknown"
        return httpx.Response(200, json={"choices": [{"message": {"content": answer}}]})

    opts = {"base_url": "http://fake/v1", "model": "fake", "backoff": 0.0, "transport": httpx.MockTransport(handler),
            "cache_path": str(tmp_path / "cache.sqlite")}
    out = tmp_path / "l.jsonl"
    stats = run_calibration(examples(2)[:2], out, judge="llm", judge_options=opts, factors=FACTORS, workers=1,
                            progress=False)
    assert stats.written == 2
    recs = read_labels(out)
    assert all(r.judge == "llm" and r.performance[0] == 1.0 and r.metadata["judge"]["metric"] == "match"
               for r in recs)
    first = calls["n"]
    run_calibration(examples(2)[:2], tmp_path / "again.jsonl", judge="llm", judge_options=opts, factors=FACTORS,
                    workers=1, progress=False)
    assert calls["n"] == first  # answered from the cache


def test_bad_lines_are_error_lines_and_failures_exit_1(tmp_path: Path) -> None:
    """One bad line used to stop `pocsdk calibrate` with no output at all, and a run whose every example
    failed exited 0."""
    good = examples(3)
    lines = [good[0].model_dump_json(), '{"id": "no-gold", "context": "Some text here."}', "not json",
             json.dumps({"id": "bad-doc", "context": [{"title": "x"}], "answers": ["x"]}), good[1].model_dump_json()]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "labels.jsonl"
    args = ["calibrate", "--dataset", f"jsonl:{data}", "--compressor", "extractive", "-o", str(out),
            "--factors", "1,2,4", "--workers", "1", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5  # one line per input line
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) >= {"no-gold", "mixed-3", "bad-doc"}
    assert "string 'text'" in errors["bad-doc"]["message"] and errors["no-gold"]["code"] == "invalid_input"
    assert len(read_labels(out)) == 2
    # resuming writes no error line twice, and the status still says that examples failed
    for more in (["--resume"], ["--resume", "--retry-failed"]):
        res = CliRunner().invoke(app, [*args, *more])
        assert res.exit_code == 1 and len(out.read_text().splitlines()) == 5, (more, res.output)
    # the bad lines fixed: their old error lines are history, and the status is clean
    fixed = [good[0].model_dump_json(), good[1].model_dump_json(),
             json.dumps({"id": "no-gold", "context": good[0].context, "answers": ["Francisco de Orellana"]})]
    data.write_text("\n".join(fixed) + "\n")
    res = CliRunner().invoke(app, [*args, "--resume", "--retry-failed"])
    assert res.exit_code == 0, res.output
    for bad in (["--compressor", "nope"], ["--judge", "nope"], ["--param", "bogus=1"], ["--factors", "2,1"]):
        res = CliRunner().invoke(app, [*args, "--overwrite", *bad])
        assert res.exit_code == 2, (bad, res.output)


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    """Two runs appending to one labels file interleaved their lines and labelled examples twice."""
    import fcntl

    data = write_jsonl(tmp_path / "toy.jsonl", examples(2))
    out = tmp_path / "labels.jsonl"
    out.write_text("")
    with out.open("a") as held:  # another run holds the file
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = CliRunner().invoke(app, ["calibrate", "--dataset", f"jsonl:{data}", "--compressor", "extractive",
                                       "-o", str(out), "--factors", "1,2", "--workers", "1", "--quiet", "--resume"])
        assert res.exit_code == 2 and "another run is writing" in res.output
    assert out.read_text() == ""
    res = CliRunner().invoke(app, ["calibrate", "--dataset", f"jsonl:{data}", "--compressor", "extractive",
                                   "-o", str(out), "--factors", "1,2", "--workers", "1", "--quiet", "--resume"])
    assert res.exit_code in (0, 1) and out.read_text()  # free again: it runs


def _long_examples(path: Path, n: int) -> Path:
    text = " ".join(SENTENCES * 40)
    return write_jsonl(path, [Example(id=f"x{i}", dataset="toy", task="qa", context=text,
                                      query="Who first descended the Amazon river?",
                                      answers=["Francisco de Orellana"]) for i in range(n)])


def test_a_killed_run_leaves_no_worker_holding_the_output(tmp_path: Path) -> None:
    """The pool workers inherited the locked output: after the run was killed (OOM, SIGKILL) they lived on
    and every --resume was refused as "another run is writing"."""
    import signal
    import subprocess
    import sys
    import time

    data = _long_examples(tmp_path / "toy.jsonl", 400)
    out = tmp_path / "labels.jsonl"
    args = [sys.executable, "-m", "pocsdk", "calibrate", "--dataset", f"jsonl:{data}", "--compressor", "extractive",
            "-o", str(out), "--factors", "1,2,4", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.05)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_text().count("\n") < 400, "the run finished before it was killed"
    res = CliRunner().invoke(app, ["calibrate", "--dataset", f"jsonl:{data}", "--compressor", "extractive",
                                   "-o", str(out), "--factors", "1,2,4", "--workers", "1", "--quiet", "--resume"])
    assert res.exit_code == 0, res.output
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"x{i}" for i in range(400))
    time.sleep(1.5)
    for pid in workers:  # the orphans noticed and left
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), pid


def test_overwrite_never_removes_a_running_runs_output(tmp_path: Path) -> None:
    """--overwrite deleted the file before taking the lock, so the running run wrote into a deleted file."""
    import fcntl

    data = write_jsonl(tmp_path / "toy.jsonl", examples(2))
    out = tmp_path / "labels.jsonl"
    out.write_text('{"id": "kept"}\n')
    with out.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = CliRunner().invoke(app, ["calibrate", "--dataset", f"jsonl:{data}", "--compressor", "extractive",
                                       "-o", str(out), "--factors", "1,2", "--workers", "1", "--quiet",
                                       "--overwrite"])
        assert res.exit_code == 2 and "another run is writing" in res.output
    assert out.read_text() == '{"id": "kept"}\n'
    stats = run_calibration(examples(2), out, compressor="extractive", factors=[1.0, 2.0], workers=1,
                            progress=False, overwrite=True)
    assert stats.written == 3 and "\"kept\"" not in out.read_text()


def test_a_refused_run_leaves_no_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    twice = [*examples(1), *examples(1)]
    with pytest.raises(ConfigError, match="appears twice"):
        run_calibration(twice, out, compressor="extractive", factors=[1.0, 2.0], workers=1, progress=False)
    assert not out.exists()


def test_resume_refuses_other_compressor_parameters_or_judge_model(tmp_path: Path) -> None:
    """Labels of two configurations ended up in one file, which then trained one predictor."""
    import httpx

    out = tmp_path / "labels.jsonl"
    run_calibration(examples(2), out, compressor="extractive", compressor_params={"min_tokens": 16},
                    factors=[1.0, 2.0], workers=1, progress=False)
    with pytest.raises(ConfigError, match="other compressor parameters"):
        run_calibration(examples(4), out, compressor="extractive", compressor_params={"min_tokens": 32},
                        factors=[1.0, 2.0], workers=1, progress=False, resume=True)
    stats = run_calibration(examples(4), out, compressor="extractive", compressor_params={"min_tokens": 16},
                            factors=[1.0, 2.0], workers=1, progress=False, resume=True)
    assert stats.written == 2

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"message": {"content": "Francisco de Orellana"}}]})

    def opts(model: str) -> dict[str, Any]:
        return {"base_url": "http://fake/v1", "model": model, "backoff": 0.0, "transport": httpx.MockTransport(handler)}

    llm_out = tmp_path / "llm.jsonl"
    run_calibration(examples(1)[:1], llm_out, judge="llm", judge_options=opts("a"), factors=[1.0, 2.0], workers=1,
                    progress=False)
    with pytest.raises(ConfigError, match="judged by the model 'a'"):
        run_calibration(examples(2)[:2], llm_out, judge="llm", judge_options=opts("b"), factors=[1.0, 2.0],
                        workers=1, progress=False, resume=True)


def test_pool_workers_start_under_forkserver_and_spawn() -> None:
    """The orphan watch compared the worker's parent with the run: under forkserver (Python 3.14's default on
    Linux) the parent is the forkserver, so every worker left at once (BrokenProcessPool)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    init = (os.getpid(), None, "extractive", {}, "retention", {}, [1.0, 2.0])
    for method in ("forkserver", "spawn"):
        ctx = multiprocessing.get_context(method)
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=runner._init_pool_worker, initargs=init) as pool:
            assert pool.submit(os.getpid).result(timeout=120) > 0, method


def test_unknown_parameters_are_no_difference() -> None:
    """A model-backed compressor reports segment_tokens=None before its model loads: every --resume was refused."""
    from pocsdk.compressors.base import changed_parameters
    from pocsdk.compressors.ram import RAMCompressor

    pending = RAMCompressor.filled_on_load
    recorded = {"segment_tokens": 32, "encoder_layers": 8, "min_tokens": 64, "checkpoint": "/ckpts/trained"}
    now = {"segment_tokens": None, "encoder_layers": None, "min_tokens": 64, "checkpoint": "/ckpts/trained"}
    assert changed_parameters(recorded, now, pending) == []
    assert changed_parameters(recorded, {**now, "segment_tokens": 16}, pending) == ["segment_tokens"]
    # a None the user chose (no checkpoint: an untrained model) is a difference
    assert changed_parameters(recorded, {**now, "checkpoint": None}, pending) == ["checkpoint"]
    assert changed_parameters(recorded, now) == ["encoder_layers", "segment_tokens"]
    assert changed_parameters(None, {"a": 1}) == [] and changed_parameters(recorded, None) == []


def test_forkserver_workers_leave_when_the_run_is_killed(tmp_path: Path) -> None:
    """Under forkserver the orphan watch waited for the forkserver, which a live worker keeps alive: workers of a
    killed run never left (one was still there 14 minutes later)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    pids = tmp_path / "pids.txt"
    script.write_text(
        "import multiprocessing, os, signal, sys\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from pocsdk.calibration import runner\n"
        "if __name__ == '__main__':\n"
        "    init = (os.getpid(), None, 'extractive', {}, 'retention', {}, [1.0, 2.0])\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('forkserver'),\n"
        "                               initializer=runner._init_pool_worker, initargs=init)\n"
        "    pid = pool.submit(os.getpid).result(timeout=120)\n"
        "    open(sys.argv[1], 'w').write(str(pid))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, str(script), str(pids)], timeout=180, check=False)
    worker = int(pids.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists(), "the worker outlived its run"
