"""Knowledge distillation on `keras.distillation`, with Hinton's loss by default.

`Distiller` trains a student against a frozen teacher (online or with the teacher's outputs cached),
on labelled, unlabelled or mixed data; `LogitsDistillation` and `FeatureDistillation` are its losses;
`DistillationSchedule` changes the temperature and loss weights during training.

Example:

```python
import keras
import numpy as np
import kopt
x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
y = np.random.default_rng(1).integers(0, 3, 64)
teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
distiller = kopt.distill.Distiller(teacher, student)
distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
distiller.fit(x, y, epochs=1, verbose=0)
```
"""

from kopt.distill.distiller import UNLABELED, Distiller
from kopt.distill.losses import FeatureDistillation, LogitsDistillation
from kopt.distill.schedules import DistillationSchedule

__all__ = ["UNLABELED", "DistillationSchedule", "Distiller", "FeatureDistillation", "LogitsDistillation"]
