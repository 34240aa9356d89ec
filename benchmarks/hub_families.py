"""Tiny, randomly initialised KerasHub classifier models (constructors only, nothing downloaded), for benchmarks/coverage_hub.py.

``FAMILIES`` maps a family name to a zero-argument builder returning
``(model, sample_inputs)``:

* ``model``: a KerasHub classifier task (``<Name>TextClassifier`` /
  ``<Name>ImageClassifier``) built from constructors (no presets, no
  downloads) with ``preprocessor=None``; for GPT2 a plain ``keras.Model``
  classifying on the last token of the backbone's sequence output.
* ``sample_inputs``: a batch of 4 synthetic inputs -- a dict of int32 arrays
  (``token_ids``, ``padding_mask`` and/or ``segment_ids``, exactly the inputs
  the backbone declares) for text models, a float32 NHWC array for images.

Every builder calls ``keras.utils.set_random_seed(0)`` first, so models and
inputs are deterministic.
"""

import keras
import keras_hub
import numpy as np

BATCH = 4
SEQ_LEN = 16
VOCAB = 128
NUM_CLASSES = 2

# Shared tiny transformer size (text / decoder).
_TXT = dict(
    vocabulary_size=VOCAB,
    num_layers=2,
    num_heads=2,
    hidden_dim=32,
    intermediate_dim=64,
)


# --------------------------------------------------------------------------
# Sample input helpers
# --------------------------------------------------------------------------
def _text_inputs(backbone, seq_len=SEQ_LEN, pad=True):
    """Synthetic dict for whichever of token_ids/padding_mask/segment_ids the
    backbone takes. Token ids avoid 0 (a pad id for several models, and
    RoformerV2 derives its mask from ``token_ids != 0``). With ``pad=True``
    the last 3 positions of rows 1..3 are padding (id 0, mask 0), so masks are
    not trivially all-ones; ``pad=False`` gives an all-ones mask."""
    rng = np.random.default_rng(0)
    names = set(backbone.input.keys())
    token_ids = rng.integers(1, VOCAB, size=(BATCH, seq_len)).astype("int32")
    padding_mask = np.ones((BATCH, seq_len), dtype="int32")
    if pad:
        padding_mask[1:, -3:] = 0
    token_ids = token_ids * padding_mask  # pad id 0 where masked
    segment_ids = np.zeros((BATCH, seq_len), dtype="int32")
    segment_ids[:, seq_len // 2:] = 1
    segment_ids = segment_ids * padding_mask
    out = {"token_ids": token_ids}
    if "padding_mask" in names:
        out["padding_mask"] = padding_mask
    if "segment_ids" in names:
        out["segment_ids"] = segment_ids
    extra = names - set(out)
    if extra:
        raise ValueError(f"Unhandled backbone inputs: {sorted(extra)}")
    return out


def _image_inputs(size=32, channels=3):
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 1.0, size=(BATCH, size, size, channels)).astype(
        "float32"
    )


# --------------------------------------------------------------------------
# Text classifiers
# --------------------------------------------------------------------------
def build_albert():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.AlbertBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        embedding_dim=16,
        hidden_dim=32,
        intermediate_dim=64,
        num_groups=1,
        num_inner_repetitions=1,
        max_sequence_length=SEQ_LEN,
    )
    model = keras_hub.models.AlbertTextClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _text_inputs(backbone)


def _text_classifier(name, **config):
    """`keras_hub.models.<name>Backbone(**config)` in a `<name>TextClassifier`, with sample inputs."""
    def build():
        keras.utils.set_random_seed(0)
        backbone = getattr(keras_hub.models, f"{name}Backbone")(**config)
        model = getattr(keras_hub.models, f"{name}TextClassifier")(
            backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
        )
        return model, _text_inputs(backbone)

    build.__name__ = f"build_{name.lower()}"
    return build


build_bert = _text_classifier("Bert", **_TXT, max_sequence_length=SEQ_LEN)
build_deberta_v3 = _text_classifier("DebertaV3", **_TXT, max_sequence_length=SEQ_LEN, bucket_size=8)
build_distil_bert = _text_classifier("DistilBert", **_TXT, max_sequence_length=SEQ_LEN)
build_f_net = _text_classifier(  # no attention
    "FNet", **{k: v for k, v in _TXT.items() if k != "num_heads"}, max_sequence_length=SEQ_LEN)
build_roberta = _text_classifier("Roberta", **_TXT, max_sequence_length=SEQ_LEN)
# Rotary positions: no max_sequence_length.
build_roformer_v2 = _text_classifier("RoformerV2", **_TXT, head_size=16)
build_xlm_roberta = _text_classifier("XLMRoberta", **_TXT, max_sequence_length=SEQ_LEN)


# --------------------------------------------------------------------------
# Decoder used as a classifier on the last token
# --------------------------------------------------------------------------
def build_gpt2():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        **_TXT, max_sequence_length=SEQ_LEN
    )
    inputs = backbone.input  # dict: token_ids, padding_mask
    seq = backbone(inputs)  # (batch, seq, hidden)
    last = seq[:, -1, :]  # last position (a keras GetItem op node)
    outputs = keras.layers.Dense(NUM_CLASSES, name="predictions")(last)
    model = keras.Model(inputs=inputs, outputs=outputs, name="gpt2_classifier")
    # No padding, so the classified last position is a real token in every row.
    return model, _text_inputs(backbone, pad=False)


# --------------------------------------------------------------------------
# Image classifiers
# --------------------------------------------------------------------------
def build_cspnet():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.CSPNetBackbone(
        stem_filters=16,
        stem_kernel_size=3,
        stem_strides=2,
        stackwise_depth=[1, 1],
        stackwise_strides=2,
        stackwise_num_filters=[16, 32],
        block_type="dark_block",
        stage_type="csp",
        down_growth=True,
        bottle_ratio=(0.5, 1.0),
        block_ratio=(1.0, 0.5),
        expand_ratio=(2.0, 1.0),
        image_shape=(32, 32, 3),
    )
    model = keras_hub.models.CSPNetImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_deit():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
    )
    model = keras_hub.models.DeiTImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_densenet():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DenseNetBackbone(
        stackwise_num_repeats=[1, 1],
        compression_ratio=0.5,
        growth_rate=8,
        image_shape=(32, 32, 3),
    )
    model = keras_hub.models.DenseNetImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_efficientnet():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.EfficientNetBackbone(
        width_coefficient=1.0,
        depth_coefficient=1.0,
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[16, 16],
        stackwise_output_filters=[16, 24],
        stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2],
        stackwise_block_types=["v1", "v1"],
        stackwise_force_input_filters=[0, 0],
        stackwise_nores_option=[False, False],
        dropout=0.0,
        num_features=64,
        input_shape=(32, 32, 3),
    )
    model = keras_hub.models.EfficientNetImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_hgnetv2():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.HGNetV2Backbone(
        depths=[1, 1],
        embedding_size=16,
        hidden_sizes=[32, 64],
        stem_channels=[3, 8, 16],
        hidden_act="relu",
        use_learnable_affine_block=False,
        # (in_channels, mid_channels, out_channels, num_blocks, num_layers,
        #  kernel_size) per stage
        stackwise_stage_filters=[
            [16, 8, 32, 1, 1, 3],
            [32, 16, 64, 1, 1, 3],
        ],
        apply_downsample=[False, True],
        use_lightweight_conv_block=[False, False],
        image_shape=(32, 32, 3),
    )
    model = keras_hub.models.HGNetV2ImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_mit():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1],
        num_layers=2,
        layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
        image_shape=(32, 32, 3),
        hidden_dims=[16, 32],
    )
    model = keras_hub.models.MiTImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_mobilenet():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[32], [64]],  # absolute expanded channels
        stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[16], [24]],
        stackwise_kernel_size=[[3], [3]],
        stackwise_num_strides=[[2], [2]],
        stackwise_se_ratio=[[None], [0.25]],
        stackwise_activation=[["relu"], ["hard_swish"]],
        stackwise_padding=[[1], [1]],
        output_num_filters=64,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=48,
        squeeze_and_excite=0.5,
        input_num_filters=8,
        image_shape=(32, 32, 3),
    )
    model = keras_hub.models.MobileNetImageClassifier(
        backbone=backbone,
        num_classes=NUM_CLASSES,
        num_features=32,
        preprocessor=None,
    )
    return model, _image_inputs(32)


def build_resnet():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        # ResNetBackbone requires stackwise_num_filters[0] == 64, and with
        # "basic_block" the first stack has an identity shortcut, so the stem
        # must also output 64 channels.
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(32, 32, 3),
    )
    model = keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_swin_transformer():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.SwinTransformerBackbone(
        image_shape=(32, 32, 3),
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        mlp_ratio=2.0,
        drop_path=0.0,
    )
    model = keras_hub.models.SwinTransformerImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_vgg():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.VGGBackbone(
        stackwise_num_repeats=[1, 1],
        stackwise_num_filters=[16, 32],
        image_shape=(32, 32, 3),
    )
    model = keras_hub.models.VGGImageClassifier(
        backbone=backbone,
        num_classes=NUM_CLASSES,
        pooling="flatten",  # "avg" head needs a >=7x7 feature map
        pooling_hidden_dim=32,
        preprocessor=None,
    )
    return model, _image_inputs(32)


def build_vit():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
    )
    model = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


def build_xception():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.XceptionBackbone(
        stackwise_conv_filters=[[8, 16], [32, 32], [64, 64]],
        stackwise_pooling=[False, True, False],
        image_shape=(32, 32, 3),
    )
    model = keras_hub.models.XceptionImageClassifier(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=None
    )
    return model, _image_inputs(32)


FAMILIES = {
    # text
    "Albert": build_albert,
    "Bert": build_bert,
    "DebertaV3": build_deberta_v3,
    "DistilBert": build_distil_bert,
    "FNet": build_f_net,
    "Roberta": build_roberta,
    "RoformerV2": build_roformer_v2,
    "XLMRoberta": build_xlm_roberta,
    # image
    "CSPNet": build_cspnet,
    "DeiT": build_deit,
    "DenseNet": build_densenet,
    "EfficientNet": build_efficientnet,
    "HGNetV2": build_hgnetv2,
    "MiT": build_mit,
    "MobileNet": build_mobilenet,
    "ResNet": build_resnet,
    "SwinTransformer": build_swin_transformer,
    "VGG": build_vgg,
    "ViT": build_vit,
    "Xception": build_xception,
    # decoder
    "GPT2": build_gpt2,
}

TEXT_FAMILIES = [
    "Albert", "Bert", "DebertaV3", "DistilBert", "FNet", "Roberta",
    "RoformerV2", "XLMRoberta",
]
DECODER_FAMILIES = ["GPT2"]
IMAGE_FAMILIES = [
    k for k in FAMILIES if k not in TEXT_FAMILIES + DECODER_FAMILIES
]
