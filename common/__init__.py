"""Pure logic shared by the cache service and the trainers.

Nothing in this package imports ray or fastapi, so every decision here (config,
catalog, preprocessing, crop sampling, ratio math, rotation policy) is testable
in milliseconds without starting a cluster.
"""
