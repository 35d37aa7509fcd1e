"""The Stable Diffusion UNet, written from scratch with diffusers-compatible parameter names."""
