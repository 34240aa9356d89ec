"""Experimental quantization schemes (tfmot's `quantization.keras.experimental`).

Example:

```python
from kopt.quantization.experimental import default_n_bit
scheme = default_n_bit.DefaultNBitQuantizeScheme(num_bits_weight=4)
```
"""

from kopt.quantization.experimental import default_n_bit

__all__ = ["default_n_bit"]
