"""Training recipes, the adapter registry, gates and promotion (built in a later issue)."""
