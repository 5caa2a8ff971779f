"""Turning logged failures into training datasets (built in a later issue)."""
