"""Detections: Sigma and Python rules on the stream (a pipeline stage) and over the lake.

Import the engine from :mod:`auditpipe.detect.engine`; :mod:`auditpipe.detect.config` holds only
the ``[detect]`` config Struct (cheap to import)."""
