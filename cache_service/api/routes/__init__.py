"""One router per resource; :func:`cache_service.api.app.create_app` mounts them."""
