"""reconciler."""

__all__: list[str] = []
