"""Normalization: events → output documents (coalesced, ECS, Panther)."""

from __future__ import annotations

FORMATS = ("coalesced", "ecs", "panther")


def make_normalizer(fmt: str, **options):
    """A callable `Event -> list[dict]` for `fmt`. Options are the format's own (see each module)."""
    if fmt == "coalesced":
        from auditpipe.normalize.coalesced import make_coalesced_normalizer

        return make_coalesced_normalizer(**options)
    if fmt == "ecs":
        from auditpipe.normalize.ecs import make_ecs_normalizer

        return make_ecs_normalizer(**options)
    if fmt == "panther":
        from auditpipe.normalize.panther import make_panther_normalizer

        return make_panther_normalizer(**options)
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
