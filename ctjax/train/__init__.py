"""Training: state, pure jitted steps, mesh/sharding, Orbax checkpoints, the loop."""
