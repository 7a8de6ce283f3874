"""Floor 2, what happens to a task: every caller of the transition (db/transition.py) lives
here. Imports only common/ and the outside floor (db/, vendors/, storage/)."""

__all__: list[str] = []
