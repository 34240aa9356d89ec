"""`get_strategy`: the right `tf.distribute` strategy for where the code runs, and `describe`/`global_batch_size`."""

import json
import logging
import os

logger = logging.getLogger("kopt")

_REASONS = {}  # id(strategy) -> why get_strategy chose it


def _tf():
    import tensorflow as tf

    return tf


def _workers_in_tf_config():
    """Number of workers (chief included) that TF_CONFIG names; 0 without TF_CONFIG. Malformed ones raise."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"The TF_CONFIG environment variable is not valid JSON ({e}). It should look like "
                         '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
                         '"index": 0}}.') from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError('TF_CONFIG needs a "cluster" dict and a "task" dict, e.g. {"cluster": {"worker": '
                         '["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}; got ' + raw)
    workers = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
    kind, index = task.get("type"), task.get("index")
    members = cluster.get(kind) if isinstance(kind, str) else None
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG's task {task} is not in its cluster {cluster}: the task's \"type\" must be a "
                         "key of \"cluster\" and its \"index\" a position in that list.")
    return len(workers)


def _tpu_strategy(tpu):
    tf = _tf()
    if tpu not in (None, "auto"):
        address = tpu
    elif os.environ.get("TPU_NAME"):
        address = os.environ["TPU_NAME"]
    elif os.environ.get("COLAB_TPU_ADDR"):  # the older Colab TPU nodes
        address = "grpc://" + os.environ["COLAB_TPU_ADDR"]
    else:  # a TPU VM, as Colab's TPU runtimes are now
        address = "local"
    if address == "local" and not tf.config.list_physical_devices("TPU"):
        # Checked before connecting: experimental_connect_to_cluster changes this process's runtime for good
        # (later collectives, e.g. a MirroredStrategy's, fail), so it must not run without a TPU to reach.
        raise RuntimeError(
            f"A TPU was asked for (tpu={tpu!r}) but this machine has none. Check that the runtime has a TPU (in "
            "Colab: Runtime > Change runtime type > TPU). On a TPU VM, TensorFlow and tensorflow-tpu must be the "
            f"same version (this is TensorFlow {tf.__version__}; the newest tensorflow-tpu is 2.20, so install "
            "tensorflow==2.20.* with tensorflow-tpu==2.20.*). Without a TPU, call get_strategy() with tpu=None.")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(
            f"A TPU was asked for (tpu={tpu!r}) but cannot be used: {message}. Check that the runtime has a TPU "
            "(in Colab: Runtime > Change runtime type > TPU). On a TPU VM, TensorFlow and tensorflow-tpu must be "
            f"the same version (this is TensorFlow {tf.__version__}; the newest tensorflow-tpu is 2.20, so install "
            "tensorflow==2.20.* with tensorflow-tpu==2.20.*). Without a TPU, call get_strategy() with tpu=None."
        ) from None
    return tf.distribute.TPUStrategy(resolver), f"TPU at {address!r}"


def _tpu_detected():
    if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
        return True
    return bool(_tf().config.list_logical_devices("TPU"))


def _check_devices(devices):
    tf = _tf()
    if isinstance(devices, str) or not isinstance(devices, (list, tuple)) or not devices:
        raise ValueError(f"`devices` must be a non-empty list of device names such as ['/cpu:0', '/cpu:1'], "
                         f"got {devices!r}.")
    available = [d.name for d in tf.config.list_logical_devices()]
    short = {name.split("device:")[-1].lower(): name for name in available}
    missing = [d for d in devices if d.split("device:")[-1].lstrip("/").lower() not in short]
    if missing:
        raise ValueError(f"`devices` names devices that do not exist: {missing}. This process has {available}. "
                         "For two CPU replicas, split the CPU first: tf.config.set_logical_device_configuration("
                         "tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * 2).")
    return list(devices)


def get_strategy(tpu=None, devices=None):
    """The `tf.distribute` strategy for where this runs, chosen in a fixed order and logged.

    1. A TPU when asked for (`tpu="local"`, a name or a grpc address; `tpu="auto"`
       also detects one) or detected (TPU devices, `TPU_NAME` or `COLAB_TPU_ADDR`):
       resolve, connect, initialize, `TPUStrategy`.
    2. `TF_CONFIG` naming more than one worker: a `MultiWorkerMirroredStrategy`
       that Keras 3's `fit` can use (`KerasMultiWorkerMirroredStrategy`).
    3. `MirroredStrategy` over `devices` when given, or over every GPU when
       there are several.
    4. Otherwise the default strategy (one device).

    Build and compile the model, and wrap it with kopt (`prune_low_magnitude`,
    `quantize_model`, `Distiller`) inside `strategy.scope()`; call `fit` outside
    it, with the global batch size (`global_batch_size`).

    Args:
        tpu: None or "auto" (use a TPU if one is detected), or "local", a TPU
            name or a grpc address (it must be had, or this raises).
        devices: device names for a `MirroredStrategy`, e.g.
            `["/cpu:0", "/cpu:1"]` after splitting the CPU into logical devices.

    Returns:
        A `tf.distribute.Strategy`. `describe(strategy)` says which and why.

    Raises:
        RuntimeError: a TPU was asked for and cannot be used (the message says
            why and what to do).
        ValueError: `devices` that do not exist; a malformed `TF_CONFIG`.

    Example:

    ```python
    strategy = kopt.distribute.get_strategy()
    print(kopt.distribute.describe(strategy))
    with strategy.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
        model.compile("adam", "mse")
    ```
    """
    tf = _tf()
    if devices is not None and tpu is not None:
        raise ValueError("Give `tpu` or `devices`, not both.")
    workers = _workers_in_tf_config()  # read first: listing devices would start TensorFlow's runtime
    if tpu not in (None, "auto") or (devices is None and workers <= 1 and _tpu_detected()):
        strategy, why = _tpu_strategy(tpu)
    elif devices is not None:
        devices = _check_devices(devices)
        strategy, why = tf.distribute.MirroredStrategy(devices), f"the devices given: {devices}"
    elif workers > 1:
        from kopt.distribute.multi_worker import KerasMultiWorkerMirroredStrategy

        try:
            strategy = KerasMultiWorkerMirroredStrategy()
        except RuntimeError as e:
            if "program startup" not in str(e):
                raise
            raise RuntimeError("A multi-worker strategy must be made before TensorFlow runs anything: call "
                               "kopt.distribute.get_strategy() at the start of the program, before building "
                               "models or listing devices.") from None
        why = f"TF_CONFIG names {workers} workers (collective all-reduce; reduce fixed for Keras 3, keras#20585)"
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        strategy, why = tf.distribute.MirroredStrategy(gpus), f"{len(gpus)} GPUs"
    else:
        strategy, why = tf.distribute.get_strategy(), "one device: no TPU, no multi-worker TF_CONFIG, at most one GPU"
    _REASONS[id(strategy)] = why
    logger.info("kopt.distribute: %s", describe(strategy))
    return strategy


def describe(strategy=None):
    """One line: the strategy, its replicas, and why `get_strategy` chose it.

    Args:
        strategy: a `tf.distribute.Strategy` (default: the current one).

    Returns:
        A string such as "MirroredStrategy, 2 replicas in sync (/cpu:0, /cpu:1):
        chosen for the devices given".

    Example:

    ```python
    print(kopt.distribute.describe())
    ```
    """
    tf = _tf()
    strategy = strategy or tf.distribute.get_strategy()
    name = type(strategy).__name__
    if name == "_DefaultDistributionStrategy":
        name = "default strategy"
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy has none
        devices = ()
    text = f"{name}, {strategy.num_replicas_in_sync} replica{'s' if strategy.num_replicas_in_sync != 1 else ''} in sync"
    if devices:
        text += f" ({', '.join(devices)})"
    why = _REASONS.get(id(strategy))
    return f"{text}: chosen for {why}" if why else text


def global_batch_size(per_replica, strategy=None):
    """The batch size to give `fit` so that each replica gets `per_replica` samples.

    Keras splits each batch of a distributed `fit` between the replicas, so the
    batch size you pass is the global one.

    Args:
        per_replica: samples per replica per step (an integer >= 1).
        strategy: a `tf.distribute.Strategy` (default: the current one).

    Returns:
        `per_replica * strategy.num_replicas_in_sync`.

    Example:

    ```python
    batch_size = kopt.distribute.global_batch_size(32)
    ```
    """
    if not isinstance(per_replica, int) or isinstance(per_replica, bool) or per_replica < 1:
        raise ValueError(f"`per_replica` must be an integer >= 1, got {per_replica!r}.")
    strategy = strategy or _tf().distribute.get_strategy()
    return per_replica * strategy.num_replicas_in_sync
