"""Test and benchmark helpers (not part of the runtime API).

:mod:`pocsdk.testing.peers` runs the peer compressors (LLMLingua-2, SmolLM2 scoring) fully
offline so that benchmarks and tests can compare against them without the network.
"""
