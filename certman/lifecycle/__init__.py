"""The rollover state machine: pure decide(), the state file and lock, the engine, the steps."""
