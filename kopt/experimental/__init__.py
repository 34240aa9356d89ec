"""Experimental APIs (tfmot's `experimental`): `kopt.experimental.combine`, collaborative optimization.

Example:

```python
scheme = kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
```
"""

from kopt.experimental import combine

__all__ = ["combine"]
