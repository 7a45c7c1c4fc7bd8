"""The plumbing: configuration, paths, systemd notification, state files, runtime settings."""
