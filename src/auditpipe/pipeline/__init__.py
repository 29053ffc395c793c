"""The pipeline: wires parsing, reassembly and normalization; sources and sinks plug in at the edges."""

from auditpipe.pipeline.core import Counters, Pipeline

__all__ = ["Counters", "Pipeline"]
