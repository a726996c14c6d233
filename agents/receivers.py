"""Signal receivers of `agents`."""
