"""Subcommands of `fedmeta`, one module per group."""
