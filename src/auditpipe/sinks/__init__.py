"""Outputs: file (rotation), stdout, HTTP shipper behind a durable on-disk queue.

``open_sink(config)`` builds any of them (see ``auditpipe.sinks.factory``); imported lazily so
that the file sink does not pull in the HTTP client.
"""

__all__ = ["open_sink"]


def open_sink(cfg):
    from auditpipe.sinks.factory import open_sink as _open

    return _open(cfg)
