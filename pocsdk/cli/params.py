"""``--param KEY=VALUE``: compressor keyword arguments from the command line.

Values are read as JSON when they parse (``0.5``, ``true``, ``null``, ``[1, 2]``) and as plain
strings otherwise (``model=/models/llmlingua2``), so no value is ever evaluated as code.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from pocsdk.errors import ConfigError

PARAM_HELP = ("Compressor parameter as KEY=VALUE (repeatable), e.g. --param quantize=int8 "
              "--param model=/path/to/checkpoint; VALUE is JSON when it parses, else a string.")


def parse_params(items: Sequence[str] | None, *, options: Collection[str] = ()) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into keyword arguments; bad or repeated keys are a ConfigError.

    ``options`` are keys the command has its own option for (``--tokenizer`` rather than
    ``--param tokenizer=...``), refused here so one setting has one spelling.
    """
    params: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--param must look like KEY=VALUE with KEY a parameter name, got {item!r}")
        if key in options:
            raise ConfigError(f"--param {key}: use the --{key.replace('_', '-')} option instead")
        if key in params:
            raise ConfigError(f"--param {key} is given twice")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params
