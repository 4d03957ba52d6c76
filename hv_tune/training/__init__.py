"""The training loop (trainer), its loss step, optimizer/schedule and checkpoints."""
