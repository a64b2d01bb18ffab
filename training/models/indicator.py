"""The CDD channel-importance indicator: a dense 1x1 conv initialised to the identity."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelIndicator"]


class ChannelIndicator(nn.Module):
    """Dense ``in_channels -> out_channels`` 1x1 conv without bias, in the linear slot after a BN.

    Full width (``out == in``) it starts as the identity, so the student initially computes exactly the
    network without indicators. A slim indicator (``out < in``) keeps only some rows; its weights come
    from slicing a trained full-width one. ``weight`` has shape (out, in, 1, 1); row i is output channel i.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if not 1 <= out_channels <= in_channels:
            raise ValueError(f"indicator needs 1 <= out_channels <= in_channels, got {out_channels} > {in_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity rows: row i selects input channel i."""
        with torch.no_grad():
            self.weight.zero_()
            index = torch.arange(self.out_channels)
            self.weight[index, index, 0, 0] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight)

    def row_norms(self) -> torch.Tensor:
        """L2 norm of each output row, shape (out_channels,)."""
        return self.weight.detach().flatten(1).norm(dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"
