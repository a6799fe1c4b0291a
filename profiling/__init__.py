"""Throughput profiling: per-role recorders (:mod:`profiling.recorder`) and the merged report,
table and Chrome trace (:mod:`profiling.report`).
"""
