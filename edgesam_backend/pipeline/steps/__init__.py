"""Built-in pipeline steps (registered through the ``edgesam_backend.steps`` entry points)."""
