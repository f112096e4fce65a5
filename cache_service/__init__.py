"""Ray-side of the project: the SmartCache actor, its disk tier, registry and REST API."""
