"""vendors."""

__all__: list[str] = []
