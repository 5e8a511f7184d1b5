"""The engine: when work happens (the queue) and whether this replica may do it (leadership)."""
