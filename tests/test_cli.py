"""The batch CLI: `pocsdk compress` (one output record per input record, resumable) and `pocsdk info`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pocsdk.cli import app
from pocsdk.cli import info as info_module
from pocsdk.cli.info import DeviceInfo, shipped_predictors
from pocsdk.cli.jsonl import find_resume_point, iter_lines, parse_object
from pocsdk.compressors import available
from pocsdk.errors import ConfigError, EncodingError, InvalidInputError, InvalidTypeError

CLI = [sys.executable, "-c", "from pocsdk.cli import main; main()"]


def prose(seed: int, sentences: int = 40) -> str:
    """Deterministic multi-paragraph text, long enough to be compressed (hundreds of tokens)."""
    words = ["harbour", "lighthouse", "keeper", "storm", "ledger", "refund", "policy", "engine", "river", "signal"]
    out = []
    for i in range(sentences):
        a, b, c = (words[(seed + i * k) % len(words)] for k in (1, 3, 7))
        out.append(f"Sentence {i} of record {seed} says the {a} watched the {b} near the {c} all night.")
        if i % 5 == 4:
            out.append("\n\n")
    return " ".join(out)


def jsonl(*records: Any) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def read_records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "every output record must be a complete line"
    return [json.loads(line) for line in data.splitlines()]


def invoke(*args: str, input: bytes | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=input)


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    rec = json.loads(json.dumps(record))
    if "result" in rec:
        rec["result"].pop("timings")
    return rec


# -- compress: record handling -------------------------------------------------------------


def test_every_kind_of_bad_record_gets_an_error_record_in_order(tmp_path: Path) -> None:
    good = {"id": "ok-1", "text": prose(1), "query": "Who kept the lighthouse?"}
    lines = [
        json.dumps(good).encode(),                                  # 0 ok
        b"{not json",                                               # 1 invalid JSON
        b'{"text": "caf\xe9 au lait"}',                             # 2 invalid UTF-8 (latin-1 byte)
        b"[1, 2, 3]",                                               # 3 not an object
        json.dumps({"id": "no-text", "body": "x"}).encode(),       # 4 missing field
        json.dumps({"id": "num", "text": 42}).encode(),            # 5 wrong type
        json.dumps({"id": "empty", "text": "   "}).encode(),       # 6 empty text
        json.dumps({"id": "big", "text": "y" * 5000}).encode(),    # 7 too large for --max-record-bytes
        b"   ",                                                     # 8 blank: not a record
        json.dumps({"id": [1], "text": "x"}).encode(),             # 9 id of the wrong type
        json.dumps({"id": "q", "text": prose(2), "query": 7}).encode(),  # 10 query of the wrong type
        b'{"id": "nan", "text": NaN}',                              # 11 non-standard JSON constant
        b'{"id": "sur", "text": "a\\ud800b"}',                      # 12 unpaired surrogate escape
        json.dumps({"id": 77, "text": prose(3)}).encode(),         # 13 ok, integer id
        json.dumps({"text": prose(4)}).encode(),                    # 14 ok, no id: line number
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines))  # no trailing newline after the last record
    out = tmp_path / "out.jsonl"

    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.4", "--max-record-bytes", "4000")

    assert result.exit_code == 1, result.output
    records = read_records(out)
    assert [r["line"] for r in records] == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14]
    codes = {r["line"]: r["error"]["code"] for r in records if "error" in r}
    assert codes == {
        1: "invalid_input", 2: "invalid_encoding", 3: "invalid_type", 4: "invalid_input", 5: "invalid_type",
        6: "empty_context", 7: "input_too_large", 9: "invalid_type", 10: "invalid_type", 11: "invalid_input",
        12: "invalid_encoding",
    }
    for r in records:
        assert ("result" in r) != ("error" in r)
        if "error" in r:
            assert set(r["error"]) == {"type", "code", "message"} and r["error"]["message"]
    ids = [r["id"] for r in records]
    assert ids == ["ok-1", None, None, None, "no-text", "num", "empty", None, None, "q", None, None, 77, 14]
    ok = [r for r in records if "result" in r]
    assert len(ok) == 3
    for r in ok:
        assert r["result"]["compressed_tokens"] < r["result"]["original_tokens"]
    assert "records failed" in result.stderr and "invalid_encoding" in result.stderr


def test_all_good_records_exit_zero_with_summary(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*({"id": f"r{i}", "text": prose(i)} for i in range(5))))
    out = tmp_path / "out.jsonl"

    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.3", "--compressor", "truncate")

    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert [r["id"] for r in records] == [f"r{i}" for i in range(5)]
    for r in records:
        res = r["result"]
        assert res["compressor"] == "truncate"
        assert res["keep_rate"] <= 0.35
        assert res["compression_factor"] == pytest.approx(res["original_tokens"] / res["compressed_tokens"])
        assert res["requested_keep_rate"] == pytest.approx(0.3)
    assert "records compressed" in result.stderr and "tokens in" in result.stderr


def test_target_tokens_bounds_each_record(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*({"id": i, "text": prose(i, sentences=60)} for i in range(3))))
    out = tmp_path / "out.jsonl"

    result = invoke("compress", str(src), "-o", str(out), "--target-tokens", "120", "-q")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet: no summary
    for r in read_records(out):
        assert r["result"]["original_tokens"] > 600
        assert 60 <= r["result"]["compressed_tokens"] <= 130


def test_document_lists_keep_ids_and_metadata(tmp_path: Path) -> None:
    record = {
        "qid": "q-9",
        "question": "Which river flooded?",
        "passages": [
            {"id": "doc-a", "text": prose(5), "metadata": {"source": "a.txt", "rank": 1}},
            {"id": "doc-b", "text": prose(6), "metadata": {"source": "b.txt"}},
            prose(7),
        ],
    }
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(record))
    out = tmp_path / "out.jsonl"

    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5",
                    "--text-field", "passages", "--query-field", "question", "--id-field", "qid")

    assert result.exit_code == 0, result.output
    [r] = read_records(out)
    assert r["id"] == "q-9"
    docs = r["result"]["documents"]
    assert [d["id"] for d in docs] == ["doc-a", "doc-b", "2"]
    assert [d["metadata"] for d in docs] == [{"source": "a.txt", "rank": 1}, {"source": "b.txt"}, {}]
    assert r["result"]["compressed_tokens"] < r["result"]["original_tokens"]


def test_stdin_to_stdout() -> None:
    data = jsonl({"id": "a", "text": prose(1)}, {"id": "b", "text": ""})

    result = invoke("compress", "-", "-o", "-", "--keep-rate", "0.5", "-q", input=data)

    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], "result" in r) for r in records] == [("a", True), ("b", False)]


def test_floor_mode_yields_one_record_per_input(tmp_path: Path) -> None:
    """The floor may not be available in every build; either way each record gets an answer."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*({"id": i, "text": prose(i), "query": "storm?"} for i in range(3))))
    out = tmp_path / "out.jsonl"

    result = invoke("compress", str(src), "-o", str(out), "--floor", "0.9", "-q")

    records = read_records(out)
    assert [r["id"] for r in records] == [0, 1, 2]
    failed = sum("error" in r for r in records)
    assert result.exit_code == (1 if failed else 0)
    for r in records:
        if "result" in r:
            assert r["result"]["floor"]["floor"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "exactly one of"),
        (["--keep-rate", "0.5", "--target-tokens", "10"], "exactly one of"),
        (["--keep-rate", "1.5"], "keep_rate"),
        (["--keep-rate", "0.5", "--compressor", "nope"], "unknown compressor"),
        (["--keep-rate", "0.5", "--tokenizer", "nope"], "unknown tokenizer"),
        (["--keep-rate", "0.5", "--resume", "--overwrite"], "contradict"),
        (["--keep-rate", "0.5", "--predictor", "default"], "apply to --floor"),
        (["--keep-rate", "0.5", "--confidence", "0.9"], "apply to --floor"),
        (["--floor", "0.9", "--predictor", "/nonexistent/predictor"], "no predictor card"),
        (["--floor", "0.9", "--calibration", "/nonexistent/calibration.json"], "calibration"),
    ],
)
def test_bad_options_exit_2_before_writing(tmp_path: Path, extra: list[str], message: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"text": prose(1)}))
    out = tmp_path / "out.jsonl"

    result = invoke("compress", str(src), "-o", str(out), *extra)

    assert result.exit_code == 2
    assert message in result.stderr
    assert not out.exists()


def test_unwritable_output_exits_2_without_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"text": prose(1)}))
    result = invoke("compress", str(src), "-o", str(tmp_path / "no" / "such" / "dir" / "out.jsonl"),
                    "--keep-rate", "0.5")
    assert result.exit_code == 2 and "No such file or directory" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_refuses_to_clobber_output_or_input(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"text": prose(1)}))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"precious": true}\n')

    clobber = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5")
    same = invoke("compress", str(src), "-o", str(src), "--keep-rate", "0.5", "--overwrite")
    stdout_resume = invoke("compress", str(src), "-o", "-", "--keep-rate", "0.5", "--resume")
    missing = invoke("compress", str(tmp_path / "absent.jsonl"), "-o", str(tmp_path / "o2"), "--keep-rate", "0.5")

    assert (clobber.exit_code, same.exit_code, stdout_resume.exit_code, missing.exit_code) == (2, 2, 2, 2)
    assert "--resume" in clobber.stderr
    assert out.read_bytes() == b'{"precious": true}\n'
    assert src.read_bytes() == jsonl({"text": prose(1)})
    replaced = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "--overwrite")
    assert replaced.exit_code == 0 and len(read_records(out)) == 1


# -- compress: resume ------------------------------------------------------------------------


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_resume_after_killed_process(tmp_path: Path) -> None:
    """A real SIGKILL mid-run, plus a partial last line as a crash mid-write leaves it, then --resume."""
    records = [{"id": f"r{i}", "text": prose(i)} for i in range(30)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*records))
    out = tmp_path / "out.jsonl"
    reference = tmp_path / "reference.jsonl"
    assert invoke("compress", str(src), "-o", str(reference), "--keep-rate", "0.5", "-q").exit_code == 0

    # Feed the first 12 records through a pipe, so the kill lands mid-run deterministically.
    proc = subprocess.Popen([*CLI, "compress", "-", "-o", str(out), "--keep-rate", "0.5"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(jsonl(*records[:12]))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while _count_lines(out) < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _count_lines(out) == 12
    with out.open("ab") as fh:
        fh.write(b'{"id":"r12","line":12,"result":{"text":"half a rec')

    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "--resume")

    assert result.exit_code == 0, result.output
    got = read_records(out)
    assert [r["id"] for r in got] == [r["id"] for r in records]
    assert [r["line"] for r in got] == list(range(30))
    assert [without_timings(r) for r in got] == [without_timings(r) for r in read_records(reference)]
    assert "kept from the earlier run" in result.stderr


def test_resume_after_kill_at_any_moment(tmp_path: Path) -> None:
    """Kill a file-to-file run as soon as it has written something; resume must complete it exactly."""
    records = [{"id": i, "text": prose(i, sentences=30)} for i in range(150)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*records))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*CLI, "compress", str(src), "-o", str(out), "--keep-rate", "0.3", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while _count_lines(out) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and _count_lines(out) < 150, "the run was not interrupted"

    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.3", "--resume", "-q")

    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_records(out)] == list(range(150))


def test_ctrl_c_exits_130_and_leaves_whole_records(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    # SIGINT as at a terminal, also when the tests themselves run in the background (a shell starts background
    # jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored)
    proc = subprocess.Popen([*CLI, "compress", "-", "-o", str(out), "--keep-rate", "0.5"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(jsonl({"id": "a", "text": prose(1)}, {"id": "b", "text": prose(2)}))
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while _count_lines(out) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)

    assert proc.wait(timeout=60) == 130
    assert "--resume" in proc.stderr.read().decode()
    assert [r["id"] for r in read_records(out)] == ["a", "b"]


def test_resume_of_a_finished_run_appends_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"id": "a", "text": prose(1)}, {"id": "b", "text": 3}))
    out = tmp_path / "out.jsonl"
    assert invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5").exit_code == 1
    before = out.read_bytes()
    with out.open("ab") as fh:  # a crash after the last record, mid-way through writing nothing useful
        fh.write(b'{"id":"zz","li')

    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "--resume")

    # the status describes the output: it holds the earlier run's failed record (it used to exit 0)
    assert result.exit_code == 1 and "of which failed" in result.output
    assert out.read_bytes() == before


def test_resume_refuses_output_of_another_input(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n\n" + jsonl({"text": prose(1)}, {"text": prose(2)}))  # records on lines 2 and 3
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id":0,"line":0,"error":{"type":"X","code":"x","message":"m"}}\n')
    longer = tmp_path / "longer.jsonl"
    longer.write_bytes(jsonl(*({"id": i, "line": i} for i in range(5))))
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"hello\nworld\n")

    other_ids = tmp_path / "other.jsonl"
    other_ids.write_bytes(jsonl({"id": "x", "text": prose(1)}, {"id": "y", "text": prose(2)}))
    half = tmp_path / "half.jsonl"
    half.write_bytes(b'{"id":"a","line":0,"error":{"type":"X","code":"x","message":"m"}}\n')

    mismatch = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "--resume")
    wrong_id = invoke("compress", str(other_ids), "-o", str(half), "--keep-rate", "0.5", "--resume")
    too_many = invoke("compress", str(src), "-o", str(longer), "--keep-rate", "0.5", "--resume")
    foreign = invoke("compress", str(src), "-o", str(garbage), "--keep-rate", "0.5", "--resume")

    assert (mismatch.exit_code, too_many.exit_code, foreign.exit_code) == (2, 2, 2)
    assert "same input" in mismatch.stderr
    assert wrong_id.exit_code == 2 and "same input" in wrong_id.stderr
    assert half.read_bytes().count(b"\n") == 1
    assert "fewer" in too_many.stderr
    assert "not a pocsdk output record" in foreign.stderr
    assert garbage.read_bytes() == b"hello\nworld\n"


# -- jsonl helpers -------------------------------------------------------------------------


def test_iter_lines_numbers_skips_blanks_and_bounds_long_lines() -> None:
    data = b'{"a":1}\r\n\n  \n' + b"x" * 100 + b'\n{"b":2}'
    lines = list(iter_lines(io.BytesIO(data), max_bytes=50))

    assert [(r.number, r.data, r.too_large) for r in lines] == [
        (0, b'{"a":1}', False), (3, b"", True), (4, b'{"b":2}', False)]
    assert lines[-1].end == len(data)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_record_of_exactly_the_limit_fits_whatever_its_line_ending(ending: bytes) -> None:
    record = b'{"t":"' + b"x" * 42 + b'"}'  # 50 bytes
    data = record + ending + record + b"x" + ending + record  # the last one without a line end
    lines = list(iter_lines(io.BytesIO(data), max_bytes=50))
    assert [(r.data, r.too_large) for r in lines] == [(record, False), (b"", True), (record, False)]
    assert lines[-1].end == len(data)


def test_carriage_returns_inside_an_over_long_line_do_not_make_it_fit() -> None:
    data = b'{"a":"xxx"}\r\r{"b":1}\n{"c":"xxx"}\r\r\n{"d":1}\n'
    lines = list(iter_lines(io.BytesIO(data), max_bytes=11))
    assert [(r.number, r.data, r.too_large) for r in lines] == [
        (0, b"", True), (1, b"", True), (2, b'{"d":1}', False)]  # no phantom record, no shifted line numbers


def test_parse_object_raises_typed_errors() -> None:
    assert parse_object('\ufeff{"t": "ok \U0001f600"}'.encode()) == {"t": "ok \U0001f600"}
    assert parse_object(b'{"t": "\\ud83d\\ude00"}') == {"t": "\U0001f600"}  # a valid surrogate pair
    with pytest.raises(EncodingError):
        parse_object(b'{"t": "\xff"}')
    with pytest.raises(InvalidInputError):
        parse_object(b'{"t": Infinity}')
    with pytest.raises(InvalidTypeError):
        parse_object(b'"just a string"')


def test_find_resume_point_cuts_partial_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert find_resume_point(out).records == 0
    complete = b'{"id":"a","line":0}\n{"id":"b","line":4}\n'
    out.write_bytes(complete + b'{"id":"c","li')

    point = find_resume_point(out)

    assert (point.records, point.keep_bytes, point.last_line) == (2, len(complete), 4)
    out.write_bytes(b"partial only")
    assert find_resume_point(out).records == 0
    out.write_bytes(b'{"no_line": 1}\n')
    with pytest.raises(ConfigError):
        find_resume_point(out)


# -- info ------------------------------------------------------------------------------------


def test_info_json_parses() -> None:
    result = subprocess.run([*CLI, "info", "--json"], capture_output=True, check=True, timeout=120)

    report = json.loads(result.stdout)
    # other tests may register stubs in this process; the fresh CLI process sees the built-ins only
    assert set(report["compressors"]) <= set(available())
    assert {"extractive", "skim", "truncate", "random", "llmlingua2", "selfinfo", "ram"} <= set(report["compressors"])
    assert report["version"]
    assert report["devices"][0]["type"] == "cpu"
    assert isinstance(report["predictors"], list)
    extras = {e["package"]: e for e in report["extras"]}
    assert {"tiktoken", "sentence-transformers", "transformers", "langchain-core", "fastapi"} <= set(extras)
    assert all(e["installed"] == (e["version"] is not None) for e in extras.values())


def test_info_human_output_names_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(info_module, "devices", lambda: [DeviceInfo(type="cuda", index=0, name="Fake GPU",
                                                                     memory_gib=80.0)])
    result = invoke("info")

    assert result.exit_code == 0, result.output
    assert "compressors:" in result.stdout
    assert "pip install 'pocsdk[embeddings]'" in result.stdout
    assert "Fake GPU" in result.stdout and "80.0" in result.stdout


def test_shipped_predictors_reads_cards_and_survives_bad_ones(tmp_path: Path) -> None:
    assert shipped_predictors([tmp_path]) == []
    good = tmp_path / "extractive-lgbm"
    good.mkdir()
    (good / "card.json").write_text(json.dumps(
        {"schema": "pocsdk.predictor", "kind": "lightgbm", "compressor": "extractive", "created": "2026-01-01"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{oops")
    (tmp_path / "model.json").write_text("{}")  # not a card: ignored

    found = {p.name: p for p in shipped_predictors([tmp_path])}

    assert set(found) == {"extractive-lgbm", "broken"}
    assert (found["extractive-lgbm"].kind, found["extractive-lgbm"].compressor) == ("lightgbm", "extractive")
    assert found["extractive-lgbm"].error is None
    assert found["broken"].error is not None and found["broken"].kind is None


def test_unwritable_results_and_unreadable_json_are_error_records(tmp_path: Path) -> None:
    """Metadata nested past the serializer's depth used to crash the run (and every --resume after it);
    nesting past the parser's depth, 5000-digit integers and 1e400 were untyped or silently null."""
    deep = "{}"
    for _ in range(300):
        deep = '{"a":' + deep + "}"
    lines = [json.dumps({"id": "r0", "text": prose(1)}).encode(),
             b'{"id":"r1","text":[{"text":' + json.dumps(prose(2)).encode() + b',"metadata":' + deep.encode() + b"}]}",
             b'{"id":"r2","x":' + b"[" * 5000 + b"]" * 5000 + b',"text":"hi"}',
             b'{"id":"r3","text":"hi","n":' + b"9" * 5000 + b"}",
             b'{"id":"r4","text":"hi","n":1e400}',
             json.dumps({"id": "r5", "text": prose(3)}).encode()]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    assert invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "-q").exit_code == 1
    records = read_records(out)
    assert [r["line"] for r in records] == list(range(6))
    assert "result" in records[0] and "result" in records[5]
    assert [r["error"]["code"] for r in records[1:5]] == ["invalid_input"] * 4
    assert "written as JSON" in records[1]["error"]["message"] and records[1]["id"] == "r1"
    assert "too deeply" in records[2]["error"]["message"]


def test_blank_line_over_the_size_limit_is_no_record(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"id": "a", "text": prose(1)}) + b" " * 300 + b"\n" + jsonl({"id": "b", "text": prose(2)}))
    out = tmp_path / "out.jsonl"
    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "-q", "--max-record-bytes", "100")
    assert [r["line"] for r in read_records(out)] == [0, 2]  # both over 100 bytes: errors; the blank one no record
    assert result.exit_code == 1


@pytest.mark.parametrize("option", [["--param", "relevance=nope"],
                                    ["--compressor", "llmlingua2", "--param", "model=/no/such/llmlingua2"],
                                    ["--endpoint", "http://127.0.0.1:9"]])
def test_settings_that_fail_on_use_stop_before_any_record(tmp_path: Path, option: list[str]) -> None:
    """They used to fail every record in turn (an unreachable endpoint after retries each), exit 1."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"id": "a", "text": prose(1)}, {"id": "b", "text": prose(2)}))
    out = tmp_path / "out.jsonl"
    result = invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "-q", *option)
    assert result.exit_code == 2 and "cannot run with these options" in result.output
    assert not out.exists() or out.read_bytes() == b""


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*({"id": i, "text": prose(i)} for i in range(3))))
    out = tmp_path / "out.jsonl"
    assert invoke("compress", str(src), "-o", str(out), "--floor", "0.9", "-q").exit_code == 0
    first = out.read_bytes().split(b"\n")[0] + b"\n"
    out.write_bytes(first)
    for other in (["--floor", "0.95"], ["--keep-rate", "0.3"], ["--floor", "0.9", "--compressor", "extractive"]):
        result = invoke("compress", str(src), "-o", str(out), "-q", "--resume", *other)
        assert result.exit_code == 2 and "earlier run used" in result.output, other
        assert out.read_bytes() == first
    assert invoke("compress", str(src), "-o", str(out), "-q", "--resume", "--floor", "0.9").exit_code == 0
    assert len(read_records(out)) == 3
    # and the other way round: a keep-rate run is resumed neither at a floor nor at another rate
    assert invoke("compress", str(src), "-o", str(out), "--keep-rate", "0.5", "-q", "--overwrite").exit_code == 0
    first = out.read_bytes().split(b"\n")[0] + b"\n"
    out.write_bytes(first)
    for other in (["--floor", "0.9"], ["--keep-rate", "0.3"], ["--keep-rate", "0.5", "--param", "skim_share=0.2"]):
        result = invoke("compress", str(src), "-o", str(out), "-q", "--resume", *other)
        assert result.exit_code == 2 and "earlier run" in result.output, other
    # a floor run resumed at another confidence, too
    assert invoke("compress", str(src), "-o", str(out), "--floor", "0.9", "-q", "--overwrite").exit_code == 0
    out.write_bytes(out.read_bytes().split(b"\n")[0] + b"\n")
    result = invoke("compress", str(src), "-o", str(out), "-q", "--resume", "--floor", "0.9", "--confidence", "0.9")
    assert result.exit_code == 2 and "confidence" in result.output


def test_stdin_read_from_the_output_file_is_refused(tmp_path: Path) -> None:
    """``pocsdk compress - -o f --overwrite < f`` used to empty f and exit 0."""
    data = jsonl({"id": "a", "text": prose(1)})
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(data)
    with victim.open("rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "pocsdk", "compress", "-", "-o", str(victim), "--overwrite",
                               "--keep-rate", "0.5", "-q"], stdin=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 2 and b"input file" in proc.stderr
    assert victim.read_bytes() == data
    with open(os.devnull, "rb") as stdin:  # a device may be both, as in `< /dev/null -o /dev/null`
        proc = subprocess.run([sys.executable, "-m", "pocsdk", "compress", "-", "-o", os.devnull, "--overwrite",
                               "--keep-rate", "0.5", "-q"], stdin=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_servers_check_the_log_level_before_loading_anything() -> None:
    for command in (["serve"], ["proxy", "--upstream", "http://127.0.0.1:9/v1"]):
        result = invoke(*command, "--log-level", "bogus")
        assert result.exit_code == 2 and "'bogus' is not one of critical, error" in result.output


def test_info_lists_the_predictors_a_floor_would_use_and_survives_odd_cards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$POCSDK_PREDICTORS moves where a floor looks for predictors; info listed the repo's ones regardless.
    A card with markup in its kind, or nested too deep to parse, crashed the human output."""
    odd = tmp_path / "skim"
    odd.mkdir()
    (odd / "card.json").write_text(json.dumps({"schema": "pocsdk.predictor", "kind": "[/x]", "compressor": "[b]"}))
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "card.json").write_text("[" * 100_000 + "]" * 100_000)
    monkeypatch.setenv("POCSDK_PREDICTORS", str(tmp_path))
    assert {p.name for p in shipped_predictors()} == {"skim", "deep"}
    result = invoke("info")
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.stdout and "RecursionError" in result.stdout
    assert "extractive/agnostic" not in result.stdout


def test_resume_refuses_another_predictor_task_token_target_or_calibration(tmp_path: Path) -> None:
    """One output mixed two policies: a resume with another --predictor, --task or --target-tokens was accepted."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*({"id": i, "text": prose(i)} for i in range(3))))
    out = tmp_path / "out.jsonl"

    def first_only(*args: str) -> bytes:
        assert invoke("compress", str(src), "-o", str(out), "-q", "--overwrite", *args).exit_code == 0
        first = out.read_bytes().split(b"\n")[0] + b"\n"
        out.write_bytes(first)
        return first

    first = first_only("--floor", "0.9")
    for other, says in ((["--predictor", "agnostic"], "predictor"), (["--task", "summarization"], "task")):
        result = invoke("compress", str(src), "-o", str(out), "-q", "--resume", "--floor", "0.9", *other)
        assert result.exit_code == 2 and says in result.output, other
        assert out.read_bytes() == first
    first_only("--floor", "0.9", "--confidence", "0.9", "--task", "qa")
    cal = tmp_path / "cal.json"  # another calibration: a few-shot one on three made-up labels
    from pocsdk.prediction.synthetic import synthetic_records

    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(r.model_dump_json() + "\n" for r in synthetic_records(40, compressor="skim")))
    root = Path(__file__).resolve().parents[1] / "predictors" / "skim"
    assert invoke("fit-calibration", "--labels", str(labels), "--predictor", str(root), "-o", str(cal)).exit_code == 0
    result = invoke("compress", str(src), "-o", str(out), "-q", "--resume", "--floor", "0.9", "--confidence", "0.9",
                    "--task", "qa", "--calibration", str(cal))
    assert result.exit_code == 2 and "calibration" in result.output
    first_only("--keep-rate", "0.4")
    result = invoke("compress", str(src), "-o", str(out), "-q", "--resume", "--target-tokens", "100")
    assert result.exit_code == 2 and "--target-tokens" in result.output
    first_only("--target-tokens", "200")
    result = invoke("compress", str(src), "-o", str(out), "-q", "--resume", "--target-tokens", "900")
    assert result.exit_code == 2 and "--target-tokens 900" in result.output
    assert invoke("compress", str(src), "-o", str(out), "-q", "--resume", "--target-tokens", "200").exit_code == 0
    assert len(read_records(out)) == 3


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    """Two runs (a --resume started while the first still ran) wrote over each other's lines."""
    import fcntl

    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*({"id": i, "text": prose(i)} for i in range(3))))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    with out.open("ab") as held:  # another run holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in (["--resume"], ["--overwrite"]):
            result = invoke("compress", str(src), "-o", str(out), "-q", "--keep-rate", "0.4", *extra)
            assert result.exit_code == 2 and "another run is writing" in result.output, extra
    assert out.read_bytes() == b""
    assert invoke("compress", str(src), "-o", str(out), "-q", "--keep-rate", "0.4", "--resume").exit_code == 0
    assert len(read_records(out)) == 3
    # a run refused before writing anything leaves no empty file behind
    fresh = tmp_path / "fresh.jsonl"
    assert invoke("compress", str(src), "-o", str(fresh), "-q", "--keep-rate", "0.4", "--tokenizer", "nope:x"
                  ).exit_code == 2
    assert not fresh.exists()


def test_info_names_what_the_predictor_option_takes() -> None:
    """info listed "skim/mlp", which --predictor refused; it now says what --predictor takes."""
    by_name = {p.name: p for p in shipped_predictors()}
    assert by_name["skim"].select == "default" and by_name["skim/mlp"].select == "mlp"
    assert by_name["extractive/agnostic"].select == "agnostic"


def test_a_pipe_given_as_a_path_has_no_size() -> None:
    from pocsdk.cli.jsonl import open_input

    r, w = os.pipe()
    os.close(w)
    stream, size = open_input(f"/dev/fd/{r}")
    stream.close()
    assert size is None  # the progress bar had a total of 0 and sat at 0%


def test_the_lock_leaves_devices_and_symlinks_alone(tmp_path: Path) -> None:
    """Two runs writing to /dev/null refused each other; a refused run removed a dangling symlink and left an
    empty file at its target."""
    import fcntl

    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(*({"id": i, "text": prose(i)} for i in range(2))))
    with open("/dev/null", "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert invoke("compress", str(src), "-o", "/dev/null", "-q", "--keep-rate", "0.4").exit_code == 0
    link = tmp_path / "out.jsonl"
    link.symlink_to(tmp_path / "target.jsonl")
    assert invoke("compress", str(src), "-o", str(link), "-q", "--keep-rate", "0.4", "--tokenizer", "nope:x"
                  ).exit_code == 2
    assert link.is_symlink() and not (tmp_path / "target.jsonl").exists()
    assert invoke("compress", str(src), "-o", str(link), "-q", "--keep-rate", "0.4").exit_code == 0
    assert len(read_records(tmp_path / "target.jsonl")) == 2
