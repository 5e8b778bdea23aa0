"""Demonstrations, keyframe discovery, the offline `Dataset` builder and its file format.

Nothing here imports a simulator at import time: `record_demos` imports MetaWorld when called,
and the RLBench reader needs no RLBench at all.
"""
