"""Diffusion pieces kept apart so each can change alone: noise schedule, training loss, sampler."""
