"""Parsing: audit lines and kernel messages → `Record`s, and the value decoders."""

from auditpipe.parsing.execve import execve_argv, proctitle_argv
from auditpipe.parsing.record import (
                                     MAX_LINE,
                                     ParseError,
                                     Parser,
                                     Record,
                                     decode_hex_value,
                                     parse_body,
                                     parse_header,
                                     parse_kernel,
                                     parse_line,
)
from auditpipe.parsing.sockaddr import decode_sockaddr

__all__ = [
    "MAX_LINE", "ParseError", "Parser", "Record", "decode_hex_value", "decode_sockaddr", "execve_argv",
    "parse_body", "parse_header", "parse_kernel", "parse_line", "proctitle_argv",
]
