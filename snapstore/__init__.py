"""snapstore: a Git-style content-addressed snapshot store for conversation trees."""

__version__ = "0.1.0"
