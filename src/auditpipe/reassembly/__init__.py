"""Reassembly: records → events, with exact lost-serial accounting."""

from auditpipe.reassembly.reassembler import Event, Reassembler, ends_event, looks_cut_short
from auditpipe.reassembly.serials import SerialTracker

__all__ = ["Event", "Reassembler", "SerialTracker", "ends_event", "looks_cut_short"]
