"""The HTTP receiver behind ``auditpipe serve``: body decoding, per-sender reordering, connection limits."""
