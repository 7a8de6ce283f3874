"""What happens to a task and its owner: every caller of the transition, and the accounts
behind the tasks (floor 2 of the floor plan: below HTTP and the processes, above db/)."""

__all__: list[str] = []
