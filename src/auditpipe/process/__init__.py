"""Process and container context: a process table kept from the audit stream and /proc, and
the filter stage that can use its labels. See docs/process.md."""

from auditpipe.process.config import FilterConfig, FilterRule, ProcessConfig

__all__ = ["FilterConfig", "FilterRule", "ProcessConfig"]
