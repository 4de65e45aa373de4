"""JSON API for the viewer and administration."""
