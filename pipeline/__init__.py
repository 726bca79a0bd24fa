"""Support package of the three stages: images, latents, stats, checkpoints, config, simulation, evaluation."""
