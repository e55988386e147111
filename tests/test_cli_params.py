"""``--param KEY=VALUE``: compressor parameters from the command line (compress, calibrate, serve)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pocsdk.calibration.labels import read_labels
from pocsdk.cli import app
from pocsdk.cli.params import parse_params
from pocsdk.errors import ConfigError
from tests.test_calibrate import examples, write_jsonl
from tests.test_cli import jsonl, prose, read_records


def test_values_are_json_when_they_parse_and_strings_otherwise() -> None:
    got = parse_params(["min_tokens=10", "quantize=int8", "skim_share=0.5", "flag=true", "none=null",
                        "path=/models/a=b", "empty="])
    assert got == {"min_tokens": 10, "quantize": "int8", "skim_share": 0.5, "flag": True, "none": None,
                   "path": "/models/a=b", "empty": ""}
    assert parse_params(None) == {}


@pytest.mark.parametrize(("items", "message"), [
    (["quantize"], "KEY=VALUE"),
    (["=3"], "KEY=VALUE"),
    (["not-a-name=3"], "KEY=VALUE"),
    (["a=1", "a=2"], "twice"),
])
def test_malformed_params_are_config_errors(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(items)


def test_keys_with_their_own_option_are_refused() -> None:
    with pytest.raises(ConfigError, match="--api-key"):
        parse_params(["api_key=x"], options=("api_key",))


def test_compress_passes_params_to_the_compressor(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"id": "a", "text": prose(1), "query": "Who watched the storm?"}))
    runner = CliRunner()
    plain, raised = tmp_path / "plain.jsonl", tmp_path / "raised.jsonl"
    assert runner.invoke(app, ["compress", str(src), "-o", str(plain), "--keep-rate", "0.3", "-q"]).exit_code == 0
    res = runner.invoke(app, ["compress", str(src), "-o", str(raised), "--keep-rate", "0.3", "-q",
                              "--param", "min_tokens=100000"])
    assert res.exit_code == 0, res.output
    compressed, passed = read_records(plain)[0]["result"], read_records(raised)[0]["result"]
    assert compressed["compressed_tokens"] < compressed["original_tokens"]
    # the raised min_tokens makes this context too short to compress
    assert passed["compressed_tokens"] == passed["original_tokens"]
    assert passed["text"] == prose(1)


@pytest.mark.parametrize(("param", "message"), [
    ("no_such_parameter=1", "bad parameters for compressor"),
    ("tokenizer=heuristic", "--tokenizer"),
    ("min_tokens", "KEY=VALUE"),
])
def test_compress_rejects_bad_params_before_writing(tmp_path: Path, param: str, message: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl({"text": prose(1)}))
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["compress", str(src), "-o", str(out), "--keep-rate", "0.5", "--param", param])
    assert res.exit_code == 2
    assert message in res.stderr
    assert not out.exists()


def test_calibrate_records_the_params_in_the_labels(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "toy.jsonl", examples(2))
    out = tmp_path / "labels.jsonl"
    res = CliRunner().invoke(app, [
        "calibrate", "--dataset", f"jsonl:{data}", "--compressor", "skim", "-o", str(out), "--factors", "1,2",
        "--workers", "1", "--quiet", "--param", "skim_share=0.1", "--param", "min_tokens=8"])
    assert res.exit_code == 0, res.output
    params = [r.metadata["compressor_params"] for r in read_labels(out)]
    assert params and all(p["skim_share"] == 0.1 and p["min_tokens"] == 8 for p in params)
    res = CliRunner().invoke(app, [
        "calibrate", "--dataset", f"jsonl:{data}", "-o", str(tmp_path / "x.jsonl"), "--param", "bad"])
    assert res.exit_code == 2  # a bad option
    assert "KEY=VALUE" in res.output


def test_service_gives_each_param_to_the_compressors_that_take_it() -> None:
    from pocsdk.server.service import ServiceConfig, create_app

    app_ = create_app(ServiceConfig(compressors=["extractive", "skim"], api_key=None,
                                    compressor_params={"skim_share": 0.1, "min_tokens": 8}))
    assert app_ is not None
    with pytest.raises(ConfigError, match="skim_share applies to none"):
        create_app(ServiceConfig(compressors=["extractive"], api_key=None, compressor_params={"skim_share": 0.1}))


def test_service_hosted_compressor_uses_the_params() -> None:
    from pocsdk.server.service import build_compressor

    skim = build_compressor("skim", params={"skim_share": 0.1, "min_tokens": 8})
    extractive = build_compressor("extractive", params={"skim_share": 0.1, "min_tokens": 8})
    assert skim.parameters()["skim_share"] == 0.1 and skim.parameters()["min_tokens"] == 8
    assert extractive.parameters()["min_tokens"] == 8 and "skim_share" not in extractive.parameters()
    assert json.loads(json.dumps(skim.parameters()))  # still JSON-ready
