"""Drop-in use of fewstep from diffusers pipelines and k-diffusion / ComfyUI sampler slots.

Neither diffusers nor k-diffusion is imported by ``import fewstep``; each integration module imports only
what it needs.
"""
