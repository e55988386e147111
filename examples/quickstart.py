"""Quickstart: compress retrieved passages for a question, at a fixed rate and under a floor.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import json
from pathlib import Path

from pocsdk import Compressor
from pocsdk.errors import ArtifactError

HERE = Path(__file__).parent
passages = json.loads((HERE / "data" / "lighthouse_passages.json").read_text())
question = "When was the current Karsby lighthouse built and how far can its light be seen?"

# Fixed rate: keep about 30% of the tokens.
fixed = Compressor(keep_rate=0.3).compress(passages, query=question)
print(f"fixed rate: {fixed.original_tokens} -> {fixed.compressed_tokens} tokens "
      f"({fixed.compression_factor:.1f}x) in {fixed.timings.total_ms:.1f} ms")
for doc in fixed.documents:  # ids and metadata come back with every document
    print(f"  {doc.id} {doc.metadata}: {doc.original_tokens} -> {doc.compressed_tokens}")

# Token target: at most 200 tokens.
target = Compressor(target_tokens=200).compress(passages, query=question)
print(f"target 200: {target.compressed_tokens} tokens")

# Performance floor: keep at least 90% of the task performance of the full context.
try:
    floor = Compressor(floor=0.9).compress(passages, query=question)
except ArtifactError as exc:  # no shipped predictor in this build
    print(f"floor mode unavailable: {exc}")
else:
    assert floor.floor is not None
    print(f"floor 0.9: {floor.compression_factor:.1f}x, predicted performance "
          f"{floor.floor.predicted_performance:.2f} ({floor.floor.reason})")
print()
print(fixed.text)
