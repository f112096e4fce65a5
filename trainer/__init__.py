"""Training side: Ray Train workers, the validation actor, the launcher and the CLI."""
