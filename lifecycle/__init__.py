"""lifecycle: what happens to a task (the floor between db/vendors/storage and HTTP)."""

__all__: list[str] = []
