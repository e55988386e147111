"""Integrations with LLM frameworks. Each lives in its own module behind its own extra.

``pocsdk.integrations.langchain`` needs ``pip install 'pocsdk[langchain]'`` (langchain-core
only); importing this package imports no framework.
"""

from __future__ import annotations

__all__: list[str] = []
