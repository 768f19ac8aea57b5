"""Training engine: options, the builder, the run, the trainer loop, hooks, writers, optimizer, evolve, plots."""
