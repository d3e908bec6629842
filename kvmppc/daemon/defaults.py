"""Where the daemon lives by default; the CLI's help names these without importing the
daemon's settings machinery (TOML, dataclasses)."""

DEFAULT_CONFIG_FILE = "/etc/kvmppc/kvmppc.conf"
DEFAULT_SOCKET = "/run/kvmppc/kvmppc.sock"
