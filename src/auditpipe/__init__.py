"""auditpipe: a Linux audit pipeline (kernel or audit.log in; ECS, Panther or coalesced JSON out)."""

__version__ = "0.1.0"


def _pure_python() -> None:
    """``AUDITPIPE_PURE=1``: import this package's modules from their .py files even where
    scripts/build_compiled.sh put a compiled .so next to them (to test and compare the pure build)."""
    import os
    import sys
    from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader

    root = os.path.dirname(os.path.abspath(__file__))

    def source_only(path: str) -> FileFinder:
        if path == root or path.startswith(root + os.sep):
            return FileFinder(path, (SourceFileLoader, SOURCE_SUFFIXES))
        raise ImportError(path)

    sys.path_hooks.insert(0, source_only)
    for path in list(sys.path_importer_cache):
        if path == root or path.startswith(root + os.sep):
            del sys.path_importer_cache[path]


if __import__("os").environ.get("AUDITPIPE_PURE"):
    _pure_python()
