"""Train state, the pure train step, optimizers and the training loop."""
