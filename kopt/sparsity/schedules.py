"""Pruning schedules: when to prune and to which sparsity, as a function of the step.

Same names, arguments and values as `tfmot.sparsity.keras` (checked step by step
against tfmot in tests/sparsity/test_schedules.py), written with `keras.ops`.
"""

import abc
import numbers

import keras
from keras import ops


def _check_int(value, name, fix):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}). {fix}")
    return int(value)


def _check_sparsity(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1) (the fraction of weights set to zero), "
            f"got {value!r}. For example {name}=0.8 prunes 80% of the weights."
        )
    return float(value)


class PruningSchedule(abc.ABC):
    """Base class for pruning schedules.

    A schedule maps the training step to `(should_prune, sparsity)`: whether the
    masks are recomputed at this step, and the fraction of weights to zero.
    Subclass it and implement `__call__` and `get_config` for a custom schedule.

    Example:

    ```python
    schedule = kopt.sparsity.ConstantSparsity(0.5, begin_step=0, frequency=10)
    should_prune, sparsity = schedule(20)
    ```
    """

    @staticmethod
    def _should_prune_in_step(step, begin_step, end_step, frequency):
        in_range = ops.greater_equal(step, begin_step)
        if end_step >= 0:  # end_step == -1 means: keep pruning forever.
            in_range = ops.logical_and(in_range, ops.less_equal(step, end_step))
        on_turn = ops.equal(ops.mod(ops.subtract(step, begin_step), frequency), 0)
        return ops.logical_and(in_range, on_turn)

    @staticmethod
    def _validate_steps(begin_step, end_step, frequency, allow_forever):
        begin_step = _check_int(begin_step, "begin_step", "Pass the training step to start at, e.g. 0.")
        end_step = _check_int(end_step, "end_step", "Pass the training step to stop at.")
        frequency = _check_int(frequency, "frequency", "Pass how many steps apart masks are updated, e.g. 100.")
        if begin_step < 0:
            raise ValueError(f"`begin_step` must be >= 0, got {begin_step}.")
        if end_step == -1 and not allow_forever:
            raise ValueError("`end_step` cannot be -1 for this schedule: it needs a step at which to reach the final sparsity.")
        if end_step != -1:
            if end_step < 0:
                raise ValueError(f"`end_step` must be -1 (prune until training ends) or >= 0, got {end_step}.")
            if end_step < begin_step:
                raise ValueError(
                    f"`end_step` ({end_step}) must be >= `begin_step` ({begin_step}). "
                    "Swap them, or pass end_step=-1 to prune until training ends."
                )
        if frequency <= 0:
            raise ValueError(f"`frequency` must be > 0 (steps between mask updates), got {frequency}.")
        return begin_step, end_step, frequency

    @abc.abstractmethod
    def __call__(self, step):
        """Returns `(should_prune, sparsity)` tensors for the given step."""

    @abc.abstractmethod
    def get_config(self):
        """Returns the constructor arguments as a dict."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="kopt")
class ConstantSparsity(PruningSchedule):
    """Prunes to a constant sparsity every `frequency` steps in [`begin_step`, `end_step`].

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: step at which pruning starts.
        end_step: last step at which masks are updated; -1 (default) prunes
            until training ends.
        frequency: masks are updated every `frequency` steps.

    Example:

    ```python
    schedule = kopt.sparsity.ConstantSparsity(0.8, begin_step=0, frequency=10)
    should_prune, sparsity = schedule(10)  # (True, 0.8)
    ```
    """

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity(target_sparsity, "target_sparsity")
        self.begin_step, self.end_step, self.frequency = self._validate_steps(
            begin_step, end_step, frequency, allow_forever=True
        )

    def __call__(self, step):
        should_prune = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return should_prune, ops.convert_to_tensor(self.target_sparsity, dtype="float32")

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="kopt")
class PolynomialDecay(PruningSchedule):
    """Sparsity rises from `initial_sparsity` to `final_sparsity` along a polynomial.

    `sparsity(step) = final + (initial - final) * (1 - p) ** power`, with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`
    (Zhu & Gupta, 2017): fast at first, then levelling off at the target.

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity reached at `end_step`, in [0, 1).
        begin_step: step at which pruning starts.
        end_step: step at which `final_sparsity` is reached; must be > begin_step.
        power: exponent of the polynomial (3 by default).
        frequency: masks are updated every `frequency` steps.

    Example:

    ```python
    schedule = kopt.sparsity.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=1000)
    should_prune, sparsity = schedule(500)
    ```
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100):
        self.initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
        self.begin_step, self.end_step, self.frequency = self._validate_steps(
            begin_step, end_step, frequency, allow_forever=False
        )
        if self.end_step == self.begin_step:
            raise ValueError(
                f"PolynomialDecay needs `end_step` > `begin_step` to decay (both are {self.begin_step}). "
                "For a one-off prune use ConstantSparsity(target_sparsity, begin_step, end_step=begin_step)."
            )
        if isinstance(power, bool) or not isinstance(power, numbers.Real):
            raise ValueError(f"`power` must be a number, got {power!r}.")
        self.power = power

    def __call__(self, step):
        progress = ops.divide(ops.cast(ops.subtract(step, self.begin_step), "float32"), self.end_step - self.begin_step)
        progress = ops.minimum(1.0, ops.maximum(0.0, progress))
        sparsity = ops.add(
            ops.multiply(self.initial_sparsity - self.final_sparsity, ops.power(1.0 - progress, self.power)),
            self.final_sparsity,
        )
        should_prune = self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency)
        return should_prune, sparsity

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }
