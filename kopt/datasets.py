"""Small real datasets that ship with packages (nothing is downloaded)."""


def load_digits(test_fraction=0.25, seed=0):
    """scikit-learn's bundled handwritten digits (1797 8x8 grey images, 10 classes).

    Args:
        test_fraction: fraction of the samples held out for testing (stratified).
        seed: seed of the split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, images float32 in [0, 1] with
        shape `(n, 8, 8, 1)`, labels int32.

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = kopt.datasets.load_digits()
    ```
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: pip install 'kopt-keras[demo]'") from e
    digits = sk_load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return (x_train, y_train), (x_test, y_test)
