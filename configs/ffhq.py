"""FFHQ (Karras et al. 2019) from a folder of its PNGs, at 64x64 or 256x256.

    python -m sagd_jax.main --config=configs/ffhq.py:64 --workdir=DIR --config.data.root=FOLDER

Data: ``data.name = "folder"``; set ``data.root`` to a folder holding the 70,000 FFHQ PNGs
(``images1024x1024`` or any other size: every image is resized so that its shorter side is
``data.image_size``, antialiased, then centre-cropped; the aligned faces are square, so this is
the customary plain downscale), random horizontal flips.

Variants:
  ``64`` (default): EDM's FFHQ-64 DDPM++ (Karras et al. 2022, "Elucidating the Design Space of
    Diffusion-Based Generative Models"): 128 channels, multipliers (1, 2, 2, 2), 4 residual
    blocks per resolution, attention at 16x16, dropout 0.05 (61.8M parameters here); Adam at
    2e-4 with a 10 Mimg warm-up (39,063 steps), batch 256, EMA half-life 500 kimg (decay
    0.99965 per step), 200 Mimg (781,250 steps). EDM's geometric augmentation pipeline is not
    here: plain random flips only.
  ``256``: score-SDE's FFHQ-256 NCSN++ sizes (Song et al. 2021, "Score-Based Generative
    Modeling through Stochastic Differential Equations", configs/ve/ffhq_256_ncsnpp_continuous):
    128 channels, multipliers (1, 1, 2, 2, 2, 2, 2), 2 residual blocks per resolution,
    attention at 16x16, no dropout (65.5M parameters here); Adam at 2e-4 with 5000 warm-up
    steps, batch 64, gradient clipping 1, EMA 0.999, 2.4M steps. Built from this project's
    DDPM++ blocks (NCSN++'s FIR resampling and progressive skips are not reproduced).

FID: ``python -m sagd_jax.fid_reference --config=configs/ffhq.py`` computes (once, cached) the
Inception reference statistics of the training images at this same preprocessing (the whole
folder at ``data.image_size``); ``--config.train.eval_every=N`` evaluates FID/KID during
training.
"""

from sagd_jax.config import check_variant, default_config

VARIANTS = ("64", "256")


def get_config(variant: str = "64"):
    check_variant(variant, VARIANTS)
    c = default_config()
    c.data.name, c.data.root = "folder", ""  # set data.root to the folder of FFHQ PNGs
    c.data.image_size, c.data.channels, c.data.random_flip = int(variant), 3, True
    c.data.crop, c.data.resize = "center", True
    if variant == "64":
        c.model.update(dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
                            attn_resolutions=(16,), dropout=0.05, num_groups=32))
        c.optim.update(dict(learning_rate=2e-4, warmup_steps=39_063, ema_decay=0.99965))
        c.train.update(dict(num_steps=781_250, batch_size=256))
    else:
        c.model.update(dict(ch=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2,
                            attn_resolutions=(16,), dropout=0.0, num_groups=32))
        c.optim.update(dict(learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0,
                            ema_decay=0.999))
        c.train.update(dict(num_steps=2_400_000, batch_size=64))
    c.train.update(dict(checkpoint_every=10_000, sample_every=20_000))
    return c
