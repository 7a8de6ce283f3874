"""submit."""

__all__: list[str] = []
