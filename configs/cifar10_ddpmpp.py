"""CIFAR-10 with the DDPM++ network of Song et al. / EDM (about 56M parameters).

    python -m sagd_jax.main --config=configs/cifar10_ddpmpp.py --workdir=DIR

Variants: ``full`` (default: 128 channels, multipliers (2, 2, 2), 4 residual blocks per
resolution, attention at 16x16, dropout 0.13) and ``cpu`` (the same network at 64 channels).

Data: TFDS ``cifar10`` (``data.name = "tfds:cifar10"``), split ``train``: 50,000 32x32 RGB
images used as they are (no resize or crop), random horizontal flips, the customary CIFAR-10
preprocessing (DDPM, score-SDE, EDM). Prepare it once with
``tfds build cifar10 --file_format=array_record [--data_dir=ROOT]`` (``data.root = ROOT``) or
set ``data.download=True``.

FID: ``python -m sagd_jax.fid_reference --config=configs/cifar10_ddpmpp.py`` computes (once,
cached) the Inception reference statistics of the training split (the customary CIFAR-10 train
statistics); ``--config.train.eval_every=N`` evaluates FID/KID during training.
"""

from sagd_jax.config import default_config


def get_config(variant: str = "full"):
    if variant not in ("full", "cpu"):
        raise ValueError(f"config variant {variant!r}: known: full, cpu")
    c = default_config()
    c.data.name = "tfds:cifar10"
    c.data.image_size, c.data.channels, c.data.random_flip = 32, 3, True
    c.model.update(dict(ch=128 if variant == "full" else 64, ch_mult=(2, 2, 2), num_res_blocks=4,
                        attn_resolutions=(16,), dropout=0.13, num_groups=32))
    c.optim.update(dict(learning_rate=2e-4, warmup_steps=5000, ema_decay=0.9999))
    c.train.update(dict(num_steps=400_000, batch_size=128, checkpoint_every=10_000,
                        sample_every=20_000))
    return c
