"""Facts about Panther's ``Linux.Auditd`` log type that the panther normalizer needs at run time.

Panther documents the schema (field names, types, indicators); the normalizer cannot read a YAML
file at run time, so the handful of facts it needs live here as plain frozensets, precomputed once.
``tests/test_panther_schema.py`` checks them against Panther's schema (``shared/schemas``) so the two
cannot drift apart silently.
"""

from __future__ import annotations

LOG_TYPE = "Linux.Auditd"

#: Body keys that Panther's schema names as ``string`` columns of their own (``type`` and ``eventId``
#: are strings too, but the normalizer writes them itself: see RESERVED).
STRING_FIELDS: frozenset[str] = frozenset({
    # syscall arguments and outcome
    "a0", "a1", "a2", "a3", "arch", "syscall", "success", "exit", "items", "key",
    # process identity
    "pid", "ppid", "ses", "auid", "uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid",
    "sauid", "comm", "exe", "cwd", "tty", "terminal", "proctitle", "cgroup",
    # target process (OBJ_PID, ptrace, kill)
    "opid", "oauid", "ouid", "ogid", "oses", "ocomm",
    # files
    "name", "inode", "dev", "mode", "fowner", "inode_uid", "inode_gid", "filetype", "fsmagic",
    "fsuuid", "path", "file", "xattr", "flags", "devmajor", "devminor", "perm",
    # capabilities (BPRM_FCAPS, CAPSET)
    "capability", "cap_fe", "cap_fi", "cap_fp", "cap_fver", "cap_pe", "cap_pi", "cap_pp",
    # network
    "saddr", "addr", "ip", "hostname", "family", "proto", "icmptype",
    # user space (PAM, shadow-utils, sudo)
    "acct", "id", "cmd", "res", "result", "resp",
    # labels (SELinux, AppArmor, CALIPSO)
    "subj", "subj_user", "subj_role", "subj_type", "subj_sen", "subj_clr", "obj", "obj_user",
    "obj_role", "obj_type", "obj_uid", "obj_gid", "obj_lev_low", "obj_lev_high", "objtype",
    "calipso_doi", "calipso_type",
    # integrity (IMA), features, config
    "action", "appraise_type", "cause", "hash", "func", "code", "data", "feature", "old_lock",
    "new_lock", "list", "msgtype", "old_prom", "prom", "compat", "sig", "sec", "nsec", "new_gid",
    # virtualisation (VIRT_RESOURCE)
    "vm", "old-disk", "new-disk", "old-mem", "new-mem", "old-vcpu", "new-vcpu", "old-net",
    "new-net",
})

#: Columns the normalizer fills itself; a body key of the same name goes to extra_message_fields.
RESERVED: frozenset[str] = frozenset({"type", "timestamp", "eventId", "extra_message_fields"})

#: Every column of the schema (string, json and timestamp ones).
ALL_FIELDS: frozenset[str] = STRING_FIELDS | RESERVED

#: Fields flagged as indicators, and the indicator kind Panther attaches to each.
INDICATORS: dict[str, str] = {
    "addr": "ip",
    "ip": "ip",
    "hostname": "hostname",
    "uid": "actor_id",
}

#: Panther's standard (``p_``) fields this normalizer writes.
P_FIELDS: frozenset[str] = frozenset(
    {
        "p_log_type",
        "p_event_time",
        "p_parse_time",
        "p_row_id",
        "p_any_ip_addresses",
        "p_any_domain_names",
        "p_any_actor_ids",
    }
)
