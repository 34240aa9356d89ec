"""Structured pruning: remove whole channels so that a Keras model runs faster.

Example:

```python
groups = kopt.structured.channel_groups(model)
small = kopt.structured.prune_channels(model, ratio=0.5)
```
"""

from kopt.structured.channel_wrapper import ChannelPruneWrapper
from kopt.structured.dependency import ChannelGroup
from kopt.structured.gradual import prune_channels_low_magnitude, shrink
from kopt.structured.low_rank import LowRankReport, LowRankRow, low_rank
from kopt.structured.macs import count_macs
from kopt.structured.prune_channels import channel_groups, prune_channels

__all__ = [
    "ChannelGroup", "ChannelPruneWrapper", "channel_groups", "count_macs", "prune_channels",
    "prune_channels_low_magnitude", "shrink", "low_rank", "LowRankReport", "LowRankRow",
]
