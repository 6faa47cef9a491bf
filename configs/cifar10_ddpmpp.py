"""CIFAR-10 with the DDPM++ network of Song et al. / EDM (about 56M parameters).

    python -m sagd_jax.main --config=configs/cifar10_ddpmpp.py --workdir=DIR

Variants: ``full`` (default: 128 channels, multipliers (2, 2, 2), 4 residual blocks per
resolution, attention at 16x16, dropout 0.13), ``cpu`` (the same network at 64 channels) and
``cond`` (``full`` made class-conditional on CIFAR-10's 10 classes, as EDM's conditional
CIFAR-10 DDPM++ model, ``label_dim=10``: TFDS feature ``label``, label dropout 0.1 for
classifier-free guidance; ``python -m sagd_jax.sample ... --guidance=W`` samples it).

Data: TFDS ``cifar10`` (``data.name = "tfds:cifar10"``), split ``train``: 50,000 32x32 RGB
images used as they are (no resize or crop), random horizontal flips, the customary CIFAR-10
preprocessing (DDPM, score-SDE, EDM). Prepare it once with
``tfds build cifar10 --file_format=array_record [--data_dir=ROOT]`` (``data.root = ROOT``) or
set ``data.download=True``.

FID: ``python -m sagd_jax.fid_reference --config=configs/cifar10_ddpmpp.py`` computes (once,
cached) the Inception reference statistics of the training split (the customary CIFAR-10 train
statistics); ``--config.train.eval_every=N`` evaluates FID/KID during training.
"""

from sagd_jax.config import check_variant, default_config


def get_config(variant: str = "full"):
    check_variant(variant, ("full", "cpu", "cond"))
    c = default_config()
    c.data.name = "tfds:cifar10"
    c.data.image_size, c.data.channels, c.data.random_flip = 32, 3, True
    c.model.update(dict(ch=64 if variant == "cpu" else 128, ch_mult=(2, 2, 2), num_res_blocks=4,
                        attn_resolutions=(16,), dropout=0.13, num_groups=32))
    c.optim.update(dict(learning_rate=2e-4, warmup_steps=5000, ema_decay=0.9999))
    c.train.update(dict(num_steps=400_000, batch_size=128, checkpoint_every=10_000,
                        sample_every=20_000))
    if variant == "cond":
        # EDM's conditional CIFAR-10 model: the same DDPM++ network with label_dim=10 (TFDS
        # cifar10's feature "label", classes 0..9). EDM trains it with label dropout 0 (its
        # published configs: no classifier-free guidance); guidance needs the unconditional
        # prediction too, so 10% of the training labels become the null label here (Ho &
        # Salimans' rate). The in-training samples and FID stay unguided (guidance 1).
        c.data.num_classes, c.data.label_key = 10, "label"
        c.model.num_classes = 10
        c.train.label_dropout, c.train.guidance = 0.1, 1.0
    return c
