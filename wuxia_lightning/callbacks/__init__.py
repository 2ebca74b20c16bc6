"""Lightning callbacks the Trainer runs around the training loop: the non-finite guard, one writer per
output folder, atomic checkpoints that carry the RNG states, the sample log, plain-text progress lines,
and stage 1's sampled-continuation evaluation."""
