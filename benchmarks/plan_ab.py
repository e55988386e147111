"""A/B of the chat-message planner (finding the question, choosing what to compress) on a 7k-token RAG prompt.

Run it once per source tree, alternating, e.g.::

    git worktree add /tmp/old <commit>
    for b in /tmp/old . /tmp/old .; do python benchmarks/plan_ab.py $b; done

It prints the median CPU time of ``pocsdk.llm.messages.plan`` per prompt layout (question last; a
``rag-prompt`` template that asks before the context).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path


def main(tree: str) -> None:
    root = Path(tree).resolve()
    if not (root / "pocsdk" / "__init__.py").is_file():
        raise SystemExit(f"{tree} holds no pocsdk package (usage: plan_ab.py SOURCE_TREE)")
    sys.path.insert(0, str(root))
    import pocsdk

    if root not in Path(pocsdk.__file__).resolve().parents:
        raise SystemExit(f"imported pocsdk from {pocsdk.__file__}, not from {root}")
    from pocsdk.llm.messages import MessagePolicy, plan
    from pocsdk.text.tokens import get_token_counter

    rng = random.Random(0)
    words = "river castle engine orchard harbor glacier violin comet market forest".split()
    docs = "\n\n".join(" ".join(rng.choice(words) for _ in range(180)) + "." for _ in range(40))
    prompts = {"question last": docs + "\n\nWhich violin is in the orchard?",
               "rag-prompt": "Use the context.\nQuestion: Which violin?\nContext: " + docs + "\nAnswer:"}
    counter = get_token_counter(None)
    policy = MessagePolicy()
    for name, prompt in prompts.items():
        slots = [("system", "Be brief."), ("user", prompt)]
        runs = []
        for _ in range(7):
            t0 = time.process_time()
            for _ in range(20):
                plan(slots, policy, counter)
            runs.append((time.process_time() - t0) / 20 * 1e3)
        print(f"{tree}  {name}  {counter.count(prompt)} tokens  plan() CPU ms median {statistics.median(runs):.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1].startswith("-")):
        raise SystemExit(__doc__)
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
