"""CelebA 64x64 with the network of DDIM's CelebA model (Song, Meng & Ermon 2020, "Denoising
Diffusion Implicit Models"; their configs/celeba.yml), built from this project's DDPM++ blocks.

    python -m sagd_jax.main --config=configs/celeba64.py --workdir=DIR

Data: TFDS ``celeb_a`` (``data.name = "tfds:celeb_a"``), split ``train`` (162,770 aligned
faces, 218x178 RGB). The customary preprocessing (score-SDE and much GAN work): the centred
140x140 face crop (``data.center_crop_fraction = 140 / 178``), resized to 64x64 (antialiased,
see ``sagd_jax.data.preprocess``), random horizontal flips. (DDIM's own loader crops the
128x128 square at rows 57-184, columns 25-152 instead; no centred crop gives that.)
Prepare it once with ``tfds build celeb_a --file_format=array_record [--data_dir=ROOT]``
(``data.root = ROOT``) or set ``data.download=True``.

Network (DDIM, CelebA 64): 128 channels, multipliers (1, 2, 2, 2, 4), 2 residual blocks per
resolution, attention at 16x16, dropout 0.1 (86.0M parameters here); Adam at 2e-4, batch 128,
gradient clipping 1, EMA 0.9999 (5000 warm-up steps here).

Variants: ``full`` (default, the above) and ``cpu`` (the same network at 32 channels, 5.4M
parameters, for smoke tests on a CPU).

FID: ``python -m sagd_jax.fid_reference --config=configs/celeba64.py`` computes (once, cached) the
Inception reference statistics of the training split at this same preprocessing (140x140
centre crop, 64x64); ``--config.train.eval_every=N`` evaluates FID/KID during training.
"""

from sagd_jax.config import check_variant, default_config

VARIANTS = ("full", "cpu")


def get_config(variant: str = "full"):
    check_variant(variant, VARIANTS)
    c = default_config()
    c.data.name, c.data.split = "tfds:celeb_a", "train"
    c.data.image_size, c.data.channels, c.data.random_flip = 64, 3, True
    c.data.center_crop_fraction = 140 / 178  # the 140x140 face crop of the 218x178 images
    c.data.crop, c.data.resize = "center", True
    c.model.update(dict(ch=128 if variant == "full" else 32, ch_mult=(1, 2, 2, 2, 4),
                        num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, num_groups=32))
    c.optim.update(dict(learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999))
    c.train.update(dict(num_steps=500_000, batch_size=128, checkpoint_every=10_000,
                        sample_every=20_000))
    return c
