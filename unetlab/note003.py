"""Study note 003 §19.3's printed UNet, verbatim: it is DELIBERATELY BUGGY. Do not use it as a model.

Study note 003 (学习笔记 003, "第19章: UNet — Diffusion 的骨干网络", undated) is one of the course's five
study notes (``README.md``, "Sources"). Chapter 1 runs its code exactly as printed and watches it fail,
then finds the two bugs with :func:`unetlab.trace_shapes`:

1. ``SimpleUNet(in_channels=4, ...)`` fails at construction: ``ResBlock`` builds
   ``nn.GroupNorm(8, in_channels)``, i.e. ``GroupNorm(8, 4)``, and 4 channels cannot be
   split into 8 groups.
2. Once that is patched, the forward pass fails in ``up1``: it concatenates the upsampled
   64 channels with ``down2``'s 128-channel skip (192 in all) and feeds them to a ResBlock
   built for ``out_channels * 2 = 128``.

A third flaw does not crash: the time path has no nonlinearity between ``TimeEmbedding``'s last
``Linear`` and each ``ResBlock.time_mlp`` (a ``Linear`` too), so the two collapse into one linear
map; diffusers' ``ResnetBlock2D`` applies SiLU before ``time_emb_proj``. Chapter 1 shows it numerically.

The working, fixed model is :class:`unetlab.SimpleUNet`. The code below is kept
character for character apart from whitespace (the notes lost the indentation; it is
restored, with blank lines between classes), so that the course can show the printed code
itself failing, not a paraphrase of it (``tests/test_simple_unet.py`` compares it with the note). The
note's test lines ran at import time; they are kept verbatim inside :func:`printed_test`.
(This module was called ``unetlab.seed003``; that name remains as a deprecated alias.)
"""
import torch
import torch.nn as nn


class TimeEmbedding(nn.Module):
    """时间步嵌入 | Timestep embedding"""
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * 4),
            nn.SiLU(),
            nn.Linear(dim * 4, dim * 4),
        )

    def forward(self, t):
        """
        t: (batch,) — 时间步 | Timestep
        """
        # Sinusoidal 位置编码的变体 | Variant of sinusoidal position encoding
        half_dim = self.dim // 2
        emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=t.device) * -emb)
        emb = t[:, None] * emb[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        return self.mlp(emb)


class ResBlock(nn.Module):
    """残差块 + 时间条件 | Residual block + time conditioning"""
    def __init__(self, in_channels, out_channels, time_emb_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.time_mlp = nn.Linear(time_emb_dim, out_channels)
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()
        self.norm1 = nn.GroupNorm(8, in_channels)
        self.norm2 = nn.GroupNorm(8, out_channels)

    def forward(self, x, t_emb):
        """
        x: (batch, C, H, W)
        t_emb: (batch, time_emb_dim) — 时间嵌入 | Time embedding
        """
        h = self.conv1(torch.relu(self.norm1(x)))
        # 注入时间信息 | Inject time information
        t = self.time_mlp(t_emb)[:, :, None, None]
        h = h + t
        h = self.conv2(torch.relu(self.norm2(h)))
        return h + self.skip(x)


class DownBlock(nn.Module):
    """下采样块 | Downsampling block"""
    def __init__(self, in_channels, out_channels, time_emb_dim):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, time_emb_dim)
        self.down = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x, t_emb):
        h = self.res(x, t_emb)
        return self.down(h), h  # 返回下采样后的结果和 skip 连接 | Return downsampled and skip


class UpBlock(nn.Module):
    """上采样块 | Upsampling block"""
    def __init__(self, in_channels, out_channels, time_emb_dim):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
        self.res = ResBlock(out_channels * 2, out_channels, time_emb_dim)  # ×2 for skip concat

    def forward(self, x, skip, t_emb):
        h = self.up(x)
        h = torch.cat([h, skip], dim=1)  # Skip connection
        return self.res(h, t_emb)


class SimpleUNet(nn.Module):
    """简化 UNet | Simplified UNet"""
    def __init__(self, in_channels=4, out_channels=4, base_channels=64):
        super().__init__()
        time_emb_dim = base_channels * 4
        self.time_embed = TimeEmbedding(base_channels)
        # Encoder | Encoder
        self.down1 = DownBlock(in_channels, base_channels, time_emb_dim)
        self.down2 = DownBlock(base_channels, base_channels * 2, time_emb_dim)
        # Bottleneck
        self.bottleneck = ResBlock(base_channels * 2, base_channels * 2, time_emb_dim)
        # Decoder | Decoder
        self.up1 = UpBlock(base_channels * 2, base_channels, time_emb_dim)
        self.up2 = UpBlock(base_channels, base_channels, time_emb_dim)
        # Output
        self.out = nn.Conv2d(base_channels, out_channels, 1)

    def forward(self, x, t):
        """
        x: (batch, C, H, W) — 加噪潜变量 | Noisy latent
        t: (batch,) — 时间步 | Timestep
        """
        # 时间嵌入 | Time embedding
        t_emb = self.time_embed(t)
        # Encoder | Encoder
        h1, skip1 = self.down1(x, t_emb)  # h1: downsampled, skip1: for skip
        h2, skip2 = self.down2(h1, t_emb)
        # Bottleneck
        h = self.bottleneck(h2, t_emb)
        # Decoder | Decoder
        h = self.up1(h, skip2, t_emb)
        h = self.up2(h, skip1, t_emb)
        return self.out(h)


def printed_test():
    """The note's own test lines (``# 测试 | Test``), verbatim. Raises: see the module docstring."""
    # 测试 | Test
    unet = SimpleUNet(in_channels=4, out_channels=4, base_channels=64)
    x = torch.randn(2, 4, 64, 64)
    t = torch.randint(0, 1000, (2,))
    output = unet(x, t)
    print(f"Input shape: {x.shape}")
    print(f"Output shape: {output.shape}")
    print(f"Parameters: {sum(p.numel() for p in unet.parameters()):,}")


#: the old name of :func:`printed_test` (deprecated)
seed_test = printed_test

__all__ = ["TimeEmbedding", "ResBlock", "DownBlock", "UpBlock", "SimpleUNet", "printed_test"]
