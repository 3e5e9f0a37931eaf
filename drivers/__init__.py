"""Drivers turn one wire format into event-format v1 events."""
