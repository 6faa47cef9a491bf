"""Training: the train state, the pure jitted step and the loop."""
