"""`DistillationSchedule`: changes a Distiller's temperature and loss weights during training."""

import keras
from keras import ops

from kopt.distill.distiller import Distiller, check_weight
from kopt.distill.losses import check_temperature


def _value_at(schedule, step):
    value = schedule(step) if callable(schedule) else schedule
    return float(ops.convert_to_numpy(value))


def _check_schedule(schedule, name):
    if schedule is None or callable(schedule):
        return schedule
    if name == "temperature":
        return check_temperature(schedule)
    return check_weight(schedule, name)


class DistillationSchedule(keras.callbacks.Callback):
    """Sets a `kopt.distill.Distiller`'s temperature and loss weights before every training step.

    Each argument is None (left as it is), a number, or a function of the
    optimizer's step (`optimizer.iterations`, counted over all epochs) such as a
    `keras.optimizers.schedules.LearningRateSchedule`. The values are checked at
    every step (temperature > 0, weights in [0, 1]) and logged at the end of each
    epoch (`temperature`, `student_loss_weight`).

    Args:
        temperature: the temperature of the `LogitsDistillation` losses.
        student_loss_weight: weight of the supervised loss.
        distillation_loss_weights: a list with one entry (None, number or
            function) per distillation loss.

    Example:

    ```python
    import keras
    import kopt
    # Temperature 8 -> 2, linearly over the first 1000 steps.
    schedule = kopt.distill.DistillationSchedule(
        temperature=keras.optimizers.schedules.PolynomialDecay(8.0, 1000, 2.0))
    # distiller.fit(x, y, epochs=10, callbacks=[schedule])
    ```
    """

    def __init__(self, temperature=None, student_loss_weight=None, distillation_loss_weights=None):
        super().__init__()
        self.temperature = _check_schedule(temperature, "temperature")
        self.student_loss_weight = _check_schedule(student_loss_weight, "student_loss_weight")
        if distillation_loss_weights is not None and not isinstance(distillation_loss_weights, (list, tuple)):
            raise ValueError("`distillation_loss_weights` must be a list: one entry per distillation loss.")
        self.distillation_loss_weights = None if distillation_loss_weights is None else [
            _check_schedule(w, "distillation_loss_weights") for w in distillation_loss_weights]

    def _distiller(self):
        if not isinstance(self.model, Distiller):
            raise ValueError(
                f"DistillationSchedule works with a kopt.distill.Distiller, but fit was called on "
                f"{type(self.model).__name__}.")
        return self.model

    def on_train_begin(self, logs=None):
        distiller = self._distiller()
        if self.distillation_loss_weights is not None and len(self.distillation_loss_weights) != len(
                distiller.distillation_losses):
            raise ValueError(
                f"`distillation_loss_weights` has {len(self.distillation_loss_weights)} entries but the Distiller "
                f"has {len(distiller.distillation_losses)} distillation losses.")

    def on_train_batch_begin(self, batch, logs=None):
        distiller = self._distiller()
        step = int(ops.convert_to_numpy(distiller.optimizer.iterations))
        if self.temperature is not None:
            distiller.temperature = _value_at(self.temperature, step)
        if self.student_loss_weight is not None:
            distiller.student_loss_weight = _value_at(self.student_loss_weight, step)
        if self.distillation_loss_weights is not None:
            current = distiller.distillation_loss_weights
            distiller.distillation_loss_weights = [
                old if schedule is None else _value_at(schedule, step)
                for old, schedule in zip(current, self.distillation_loss_weights)]

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            distiller = self._distiller()
            if distiller.temperature is not None:
                logs["temperature"] = distiller.temperature
            logs["student_loss_weight"] = distiller.student_loss_weight
