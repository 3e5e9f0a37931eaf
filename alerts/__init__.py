"""Everything that leaves the engine: the durable log (and, later, alarms and sinks)."""
