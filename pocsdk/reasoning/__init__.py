"""Reasoning acceleration: methods that shrink or speed up a model's own chain of thought (extra ``[neural]``).

Unlike :mod:`pocsdk.compressors`, which compress the *input* context, these act on the tokens a reasoning
model writes while it thinks. Importing this package never imports torch.
"""

from __future__ import annotations

__all__ = ["memosight"]
