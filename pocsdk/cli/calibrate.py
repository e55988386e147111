"""``pocsdk calibrate``: label a dataset with relative performance over a factor grid."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from pocsdk.cli.app import app
from pocsdk.cli.params import PARAM_HELP, parse_params
from pocsdk.compressor import DEFAULT_COMPRESSOR
from pocsdk.errors import PocError


@app.command()
def calibrate(
    dataset: str = typer.Option(..., "--dataset", "-d",
                                help="Dataset spec, e.g. nq_mixed:n=500,docs=5-20 or jsonl:/path/file.jsonl"),
    compressor: str = typer.Option(DEFAULT_COMPRESSOR, "--compressor", "-c", help="Compressor registry name."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help=PARAM_HELP),
    judge: str = typer.Option("retention", "--judge", "-j", help="retention (offline) or llm."),
    output: Path = typer.Option(..., "--output", "-o", help="Labels JSONL to write (appended with --resume)."),
    factors: str = typer.Option("1,1.5,2,3,4,6,8,12,16,20", "--factors", help="Comma-separated factors >= 1."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Label only the first N examples."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Skip ids already in the output and append."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="With --resume: run failed examples again (unscorable ones stay)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder (default $POCSDK_DATA)."),
    llm_base_url: Optional[str] = typer.Option(None, "--llm-base-url",
                                               help="OpenAI-compatible base URL (or $POCSDK_LLM_BASE_URL)."),
    llm_model: Optional[str] = typer.Option(None, "--llm-model", help="Model name (or $POCSDK_LLM_MODEL)."),
    llm_cache: Optional[Path] = typer.Option(None, "--llm-cache", help="SQLite answer cache for the llm judge."),
    llm_concurrency: int = typer.Option(8, "--llm-concurrency", min=1, help="Concurrent LLM requests per worker."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Compress each example at every factor, judge it, and write one LabelRecord line per example.

    A line of the dataset that is no usable example, and an example that fails, get an error line. Exit
    status: 0, 1 when any example failed (rerun with --resume --retry-failed), 2 for bad options.
    The API key of the llm judge comes from $POCSDK_LLM_API_KEY (or $OPENAI_API_KEY), never the command line.
    """
    from rich.console import Console

    from pocsdk.calibration.datasets import load_dataset_lines
    from pocsdk.calibration.runner import done_ids, load_featurize, run_calibration

    err = Console(stderr=True)
    try:
        grid = [float(x) for x in factors.split(",") if x.strip()]
    except ValueError:
        err.print(f"[red]error:[/red] --factors must be comma-separated numbers, got {factors!r}")
        raise typer.Exit(2) from None
    judge_options: dict[str, object] = {}
    if judge == "llm":
        judge_options = {"base_url": llm_base_url, "model": llm_model, "concurrency": llm_concurrency,
                         "cache_path": str(llm_cache) if llm_cache else None}
        judge_options = {k: v for k, v in judge_options.items() if v is not None}
    try:
        compressor_params = parse_params(param)
        examples = load_dataset_lines(dataset, root=data_root or os.environ.get("POCSDK_DATA"))
        if limit:
            examples = examples[:limit]
        if load_featurize() is None:
            err.print("[yellow]warning:[/yellow] pocsdk.prediction.features is not importable; "
                      "labels get empty feature dicts (metadata.features = 'missing')")
        stats = run_calibration(
            examples, output, compressor=compressor, compressor_params=compressor_params, judge=judge,
            judge_options=judge_options, factors=grid,
            workers=workers, resume=resume, overwrite=overwrite, progress=not quiet, retry_failed=retry_failed,
        )
    except PocError as exc:  # raised before any example is labelled: options, the dataset, the output file
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    typer.echo(json.dumps(stats.model_dump(), indent=2))
    failed: set[str] = set()
    done_ids(output, failed)  # examples whose only lines in the output are failures, this run's or earlier ones
    failed &= {ex.id for ex in examples}  # (a line since fixed has its own id now: its old error line is history)
    if failed:
        err.print(f"[yellow]{len(failed)} example(s) failed[/yellow]: fix their input lines or rerun with "
                  "--resume --retry-failed", highlight=False)
        raise typer.Exit(1)
