"""The training engine: what every training loop of edvae shares.

runtime.py (device, precision, per-step seeding, batch order, the CPU/data-parallel session),
ddp.py (torchrun process groups), metrics_log.py (metrics.jsonl/csv), loop.py (`fit`: the loop
itself: schedules, autocast, backward and optimizer, divergence check, logging, atomic
checkpoints, exact resume, progress, the final save). It imports the core (checkpoint formats,
collectives) and nothing above it: the trainers, studies and the CLI build on it.
"""
