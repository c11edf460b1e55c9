"""Structured (channel) pruning: channel groups traced through the Keras graph, and shrink().

`kprune.structured.graph.trace_channels` finds which weight slices are removed together when a
channel is removed; `kprune.shrink` rebuilds a pruned model without the removed channels.
"""

from kprune.structured.graph import ChannelGroup, ChannelTrace, trace_channels

__all__ = ["ChannelGroup", "ChannelTrace", "trace_channels"]
