"""ImageNet 64x64, unconditional or class-conditional, at the network sizes of ADM's
ImageNet-64 model (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis";
also EDM's ImageNet-64 ADM config), built from this project's DDPM++ blocks.

    python -m sagd_jax.main --config=configs/imagenet64.py[:downsampled|:resized|:cond] \
        --workdir=DIR

Variants (the data; the network is the same, with class embeddings for ``cond``):
  ``downsampled`` (default): TFDS ``downsampled_imagenet/64x64`` (van den Oord et al. 2016;
    1,281,149 training images already 64x64, so they pass through unchanged), split ``train``.
    Unconditional (this dataset has no labels).
  ``resized``: TFDS ``imagenet2012`` (the ILSVRC 2012 training set, images of any size; TFDS
    needs the ILSVRC tar files in its manual_dir): the shorter side resized to 64 with
    antialiasing (box halvings + bicubic, guided-diffusion's ``center_crop_arr``), then the
    centred 64x64 crop. Unconditional.
  ``cond``: class-conditional as ADM trains its ImageNet-64 model: the ``resized`` data with
    its labels (TFDS feature ``label``, the 1000 ILSVRC classes: ``data.num_classes =
    model.num_classes = 1000``). ADM's: the data, its preprocessing, the 1000 classes and the
    network sizes and training settings below. Ours: the class embedding of this project's
    U-Net, and label dropout 0.1 (10% of the training labels become the null label) for
    classifier-free guidance (Ho & Salimans 2022 trained their ImageNet 64x64 models with
    0.1, 0.2 and 0.5; 0.1 and 0.2 gave the best FID/IS trade-offs); ADM trains
    without label dropout and guides with a separately trained classifier. The in-training
    samples and FID stay unguided (``train.guidance = 1``); ``python -m sagd_jax.sample ...
    --guidance=W`` guides.
All with random horizontal flips. Prepare with ``tfds build NAME --file_format=array_record
[--data_dir=ROOT]`` (``data.root = ROOT``) or set ``data.download=True``.

Network (ADM, ImageNet 64): 192 channels, multipliers (1, 2, 3, 4), 3 residual blocks per
resolution, attention at 32, 16 and 8, dropout 0.1 (270M parameters here); Adam at 3e-4,
batch 2048, EMA 0.9999, 540k steps (5000 warm-up steps here). ADM's model is
class-conditional (and learns its variances, with BigGAN up/down blocks and 64-channel
attention heads); ``downsampled`` and ``resized`` have no class conditioning (unconditional
generation), ``cond`` has it; all use the DDPM++ residual and attention blocks of
``sagd_jax.models``.

FID: ``python -m sagd_jax.fid_reference --config=configs/imagenet64.py`` computes (once, cached) the
Inception reference statistics of the training split at this same preprocessing;
``--config.train.eval_every=N`` evaluates FID/KID during training.
"""

from sagd_jax.config import check_variant, default_config

VARIANTS = ("downsampled", "resized", "cond")
DATASETS = {"downsampled": "tfds:downsampled_imagenet/64x64", "resized": "tfds:imagenet2012",
            "cond": "tfds:imagenet2012"}


def get_config(variant: str = "downsampled"):
    check_variant(variant, VARIANTS)
    c = default_config()
    c.data.name, c.data.split = DATASETS[variant], "train"
    c.data.image_size, c.data.channels, c.data.random_flip = 64, 3, True
    c.data.crop, c.data.resize = "center", True
    c.model.update(dict(ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3,
                        attn_resolutions=(32, 16, 8), dropout=0.1, num_groups=32))
    c.optim.update(dict(learning_rate=3e-4, warmup_steps=5000, ema_decay=0.9999))
    c.train.update(dict(num_steps=540_000, batch_size=2048, checkpoint_every=10_000,
                        sample_every=20_000))
    if variant == "cond":
        # ADM's: class-conditional on the 1000 ILSVRC 2012 classes (TFDS imagenet2012's feature
        # "label"). Ours: label dropout 0.1 for classifier-free guidance (Ho & Salimans);
        # unguided in-training samples and FID.
        c.data.num_classes, c.data.label_key = 1000, "label"
        c.model.num_classes = 1000
        c.train.label_dropout, c.train.guidance = 0.1, 1.0
    return c
