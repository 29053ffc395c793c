"""Running auditpipe as a service: the systemd unit and default config it installs
(:mod:`.systemd`), and dropping privileges after start-up (:mod:`.privileges`)."""
