"""StyleGAN2 config-f on FFHQ 1024x1024, trained one-stage (the official 'stylegan2' preset).

Networks as NVlabs' stylegan2-ada-pytorch (``osgan_jax.models.stylegan2``): mapping 8 x
512 with lr multiplier 0.01, modulated convs with demodulation, noise inputs, 'skip' G,
'resnet' D with minibatch std (group 4), ``channel_base=32768, channel_max=512``
(G 30,370,060 and D 29,012,513 parameters at 1024). Training as the official preset:
non-saturating loss, Adam(lr 0.002, betas (0, 0.99), eps 1e-8) with the lazy
regularisation correction, batch 32, lazy R1 (gamma 10, every 16 steps), lazy path
length (weight 2, every 4 steps, decay 0.01, half batch), style mixing 0.9, G EMA with a
10 kimg half-life, 25000 kimg. The main adversarial step is one-stage through the exact
engine (minibatch std couples samples, so D's parameter gradient and G's cotangent are
taken from one forward: see ``osgan_jax.core.one_stage``); the regularisers are their own
jitted steps (``osgan_jax.core.regularizers``).

Data: FFHQ is released as folders of PNGs (``images1024x1024/00000/00000.png``, ...):

  python -m osgan_jax.main --config=configs/stylegan2_ffhq.py --workdir=DIR \
      --config.data.path=/data/ffhq/images1024x1024

Other resolutions scale the network as the official code does (same channel_base and
channel_max; images are resized with PIL): ``--config.data.resolution=256``. Lower
R1 gamma for lower resolutions (the official 'paper256' setting: 1).

Cloud TPU VM (e.g. v4-32, 4 hosts): the same command on every host, with bf16 in the
four highest-resolution blocks (the official ``num_fp16_res=4, conv_clamp=256``; bf16
needs no loss scaling) and FID-50k every 50 kimg:

  gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="\
    cd osgan_jax && python -m osgan_jax.main --config=configs/stylegan2_ffhq.py \
      --workdir=gs://$BUCKET/ffhq1024 --config.data.path=/mnt/ffhq/images1024x1024 \
      --config.multihost=True \
      --config.model.generator.num_fp16_res=4 --config.model.generator.conv_clamp=256 \
      --config.model.discriminator.num_fp16_res=4 \
      --config.model.discriminator.conv_clamp=256 \
      --config.evals.fid.every_steps=1563 --config.evals.fid.num_samples=50000 \
      --config.evals.fid.num_real=-1"

X-flips on (``data.xflip``), as the official FFHQ command (``--mirror-augment=true``
in StyleGAN2, ``--mirror=1`` in stylegan2-ada-pytorch). Adaptive discriminator
augmentation (ADA, stylegan2-ada-pytorch's default 'bgc' pipe, target 0.6) for
limited data: ``--config.augment.pipe=ada --config.augment.target=0.6``
(docs/augmentation.md).

Parameter table of this config: ``python -m osgan_jax.summary
--config=configs/stylegan2_ffhq.py``. The two-stage baseline: ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_stylegan2_config()
  c.data.name = 'folder'
  c.data.path = ''
  c.data.resolution = 1024
  c.data.channels = 3
  c.data.center_crop = 0
  c.data.xflip = True
  return c
