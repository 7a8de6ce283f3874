"""taskhook."""

__all__: list[str] = []
