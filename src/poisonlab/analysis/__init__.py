"""Analyses of trained networks (e.g. the backdoor neurons of BadNets, arXiv 1708.06733, Sec. 5.3)."""
from __future__ import annotations

from .backdoor_neurons import (
    ChannelStats,
    backdoor_neuron_rows,
    channel_activation_stats,
    default_layer,
    flag_backdoor_channels,
    plot_backdoor_neurons,
    read_point,
)

__all__ = [
    "ChannelStats", "backdoor_neuron_rows", "channel_activation_stats", "default_layer",
    "flag_backdoor_channels", "plot_backdoor_neurons", "read_point",
]
