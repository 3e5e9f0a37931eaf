"""The decision-making heart of CalGuard: units, events, the model, rules and timers."""
