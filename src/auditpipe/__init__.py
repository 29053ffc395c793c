"""auditpipe: a Linux audit pipeline (kernel or audit.log in; ECS, Panther or coalesced JSON out)."""

__version__ = "0.1.0"
