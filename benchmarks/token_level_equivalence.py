"""Kept text of llmlingua2 under one source tree, as hashes per (length, budget, rate).

Uses a tiny random BERT (only the selection is compared) on token_level.py's inputs. Run it for two trees and
diff the outputs: ``python benchmarks/token_level_equivalence.py /tmp/old > a; ... . > b; diff a b``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
    raise SystemExit(__doc__)
tree = Path(sys.argv[1]).resolve()
if not (tree / "pocsdk" / "__init__.py").is_file():
    raise SystemExit(f"{sys.argv[1]} holds no pocsdk package")
sys.path.insert(0, str(tree))
sys.path.insert(1, str(Path(__file__).resolve().parent))
import token_level as tl  # noqa: E402

import pocsdk  # noqa: E402

if tree not in Path(pocsdk.__file__).resolve().parents:
    raise SystemExit(f"imported pocsdk from {pocsdk.__file__}, not from {tree}")

from pocsdk.compressors import get_compressor, render  # noqa: E402
from pocsdk.testing.peers import make_random_token_classifier  # noqa: E402

model = make_random_token_classifier(family="bert", size="tiny")
for n in (2000, 8000):
    text = tl.texts_of_length(n, 1)[0]
    for fam_kw in ({}, {"tokenizer": "tiktoken:cl100k_base"}):
        c = get_compressor("llmlingua2", model=str(model), device="cpu", force_tokens=["\n", "?"], **fam_kw)
        scored = c.score(text)
        for rate in (0.1, 0.2, 0.33, 0.5, 0.7):
            out = render(scored, c.select(scored, rate)).text
            print(n, bool(fam_kw), rate, hashlib.sha1(out.encode()).hexdigest()[:12], len(out))
