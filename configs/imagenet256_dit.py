"""ImageNet 256x256 with a Diffusion Transformer in Stable Diffusion's VAE latent space, as DiT
trains it (Peebles & Xie 2023): DiT-XL/2 or DiT-B/2 on the 32x32x4 latents of 256 px images,
class-conditional on the 1000 ILSVRC classes.

    python -m sagd_jax.main --config=configs/imagenet256_dit.py[:xl2|:b2] --workdir=DIR

Variants: ``xl2`` (default: DiT-XL/2, 675M parameters; FID 2.27 with guidance at 7M steps in
the paper) and ``b2`` (DiT-B/2, 130M). The SAGD operator and every ``noise.*`` key act on
the latent grid (docs/math.md section 15).

Data: TFDS ``imagenet2012`` (the ILSVRC 2012 training set; TFDS needs the ILSVRC tar files in
its manual_dir; ``tfds build imagenet2012 --file_format=array_record [--data_dir=ROOT]``), the
shorter side resized to 256 with antialiasing then the centred 256x256 crop (ADM's
``center_crop_arr``, which DiT uses), random horizontal flips, labels from the feature
``label``. The autoencoder: ``data.autoencoder`` = ``sd-vae-ft-ema`` (a folder in the working
directory holding ``config.json`` and ``diffusion_pytorch_model.safetensors`` of
``stabilityai/sd-vae-ft-ema`` from Hugging Face, DiT's choice; set the key to another path);
the training set is encoded once into the latent cache (mirrors too: twice the encoding).

Training (DiT's): AdamW at a constant 1e-4, no weight decay and no warm-up in the paper (a
short one here: 1000 steps), batch 256, EMA 0.9999, 400,000 steps (the paper's comparison
point), class labels dropped with probability 0.1 for classifier-free guidance (DiT's class
dropout); in-training samples unguided, ``python -m sagd_jax.sample ... --guidance=W`` guides
(DiT's best FID uses 1.5 in EDM2's convention of this project: ``eps_u + W (eps_c - eps_u)``).
Ours: the eps prediction of this project's processes (DiT also learns the variances), the
``vp_sde`` schedule of ``default_config``.
"""

from sagd_jax.config import check_variant, default_config
from sagd_jax.models.dit import configure_dit

VARIANTS = {"xl2": "XL/2", "b2": "B/2"}


def get_config(variant: str = "xl2"):
    check_variant(variant, VARIANTS)
    c = default_config()
    c.data.name, c.data.split = "tfds:imagenet2012", "train"
    c.data.image_size, c.data.channels, c.data.random_flip = 256, 3, True
    c.data.crop, c.data.resize = "center", True
    c.data.num_classes, c.data.label_key = 1000, "label"
    c.data.autoencoder = "sd-vae-ft-ema"
    c.data.latent_channels, c.data.latent_downsample = 4, 8
    configure_dit(c.model, VARIANTS[variant])
    c.model.num_classes = 1000
    c.optim.update(dict(learning_rate=1e-4, warmup_steps=1000, weight_decay=0.0,
                        ema_decay=0.9999))
    c.train.update(dict(num_steps=400_000, batch_size=256, checkpoint_every=10_000,
                        sample_every=20_000, label_dropout=0.1, guidance=1.0))
    return c
