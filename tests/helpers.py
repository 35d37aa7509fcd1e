"""Helpers shared by several test files (imported as ``from helpers import ...``: pytest puts tests/ on sys.path)."""
import torch


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random, so no zero-init (conv_out, proj_out, ...) hides a wiring mistake.

    Weights ~ N(0, 1/fan_in), which keeps activations O(1) through a whole network; biases around 0 and
    norm scales around 1, both clearly non-trivial. Returns ``module``.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(centre + 0.1 * torch.randn(p.shape, generator=g))
    return module


def random_unets(config, seed: int = 1):
    """diffusers' ``UNet2DConditionModel`` and ``SDUNet`` for ``config`` holding the same random weights (eval mode)."""
    import diffusers

    from unetlab.sd.unet import SDUNet

    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**config.to_diffusers())
    ref = randomise(ref.to_empty(device="cpu"), seed).eval()
    with torch.device("meta"):
        ours = SDUNet(config)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ref, ours.eval()
