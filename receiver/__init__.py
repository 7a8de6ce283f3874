"""receiver."""

__all__: list[str] = []
