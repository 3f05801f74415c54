"""Diffusion numerics shared by the diffusion task and its benchmark: schedules, samplers, guidance."""
