"""Image data for training: uint8 NHWC sources and a stateless float32 [-1, 1] pipeline.

Where things live:
  config           default_data_config() (every data.* key, one default each), shared checks
  sources          the ImageSource interface, ArraySource, register_source / get_source
  fashion_mnist    IDX parsing, Debian's Fashion-MNIST files (TFDS fallback)
  tfds_source      any TFDS image dataset ("tfds:NAME")
  natural_patches  random crops of scikit-image's bundled photographs
  folder           PNG / JPEG files under a folder
  grf              Gaussian random fields of known spectrum (float32; the exact answer)
  corruption       additive patterns confined to a radial frequency band
  preprocess       resize (antialiased) and crop to data.image_size, from any source size
  pipeline         grain MapDataset of batches, pure functions of (seed, step, process);
                   batch_options checks the keys it reads, before anything loads;
                   batch_labels: the class labels of the same batches (no images read)
  latent_space     data.autoencoder: the latent grid from the keys, the autoencoder checked
                   against them, its decoder on a mesh (latents -> pixels)
  latent_cache     the training set encoded once into cached latents; their batches

Typical use:
    source = get_source(config.data)
    batch = load_batch(source, config.data, seed, step, global_batch, jax.process_index(),
                       jax.process_count())

Class labels (``data.num_classes = K > 0``; sources with ``labels`` / ``class_names``):
    num_classes = check_labels(source, config.data)       # K, or 0: no labels read
    labels = batch_labels(source, config.data, seed, global_batch, jax.process_index(),
                          jax.process_count())[step]       # int32 (B / P,), as batch's rows

More sources plug in with ``register_source(name, factory)``, ``factory(data_config)``
returning an ``ImageSource``.
"""

from sagd_jax.data.config import default_data_config
from sagd_jax.data.corruption import Corruption, corruption_from_config
from sagd_jax.data.fashion_mnist import make_fashion_mnist, parse_idx, read_idx
from sagd_jax.data.folder import make_folder
from sagd_jax.data.grf import grf_model, make_grf
from sagd_jax.data.natural_patches import make_natural_patches
from sagd_jax.data.pipeline import (
    BatchLabels,
    BatchOptions,
    batch_labels,
    batch_options,
    batches,
    clean_images,
    iterate,
    load_batch,
    local_batch_size,
)
from sagd_jax.data.preprocess import Preprocess
from sagd_jax.data.sources import (
    ArraySource,
    ImageSource,
    check_labels,
    get_source,
    known_sources,
    read_image,
    register_source,
)
from sagd_jax.data.tfds_source import make_tfds

register_source("fashion_mnist", make_fashion_mnist)
register_source("tfds", make_tfds)
register_source("natural_patches", make_natural_patches)
register_source("folder", make_folder)
register_source("grf", make_grf)

__all__ = [
    "ArraySource",
    "BatchLabels",
    "BatchOptions",
    "Corruption",
    "ImageSource",
    "Preprocess",
    "batch_labels",
    "batch_options",
    "batches",
    "check_labels",
    "clean_images",
    "corruption_from_config",
    "default_data_config",
    "get_source",
    "grf_model",
    "iterate",
    "known_sources",
    "load_batch",
    "local_batch_size",
    "parse_idx",
    "read_idx",
    "read_image",
    "register_source",
]
