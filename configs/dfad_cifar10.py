"""DFAD on CIFAR-10: the ResNet-34 teacher distilled into ResNet-18 without data.

DFAD's CIFAR settings (``DFAD_cifar.py``): batch 256, DFAD's generator (z 256, width
64; Adam lr 1e-3), student SGD (lr 0.1, momentum 0.9, weight decay 5e-4), 500 epochs
of 50 iterations (25,000 steps), both learning rates x0.1 at epochs 100 and 200, test
accuracy every epoch. One-stage by default; DFAD's two-stage schedule (5 student
updates per generator update) with ``--config.stage=two``. Only the test split is
read (tfds ``cifar10``, ``--config.data.path`` = its data_dir). Needs the teacher of
``configs/dfad_teacher_cifar10.py`` in ``dfad.teacher_workdir``:

  python -m osgan_jax.main --config=configs/dfad_teacher_cifar10.py --workdir=/tmp/dfad_teacher_cifar10
  python -m osgan_jax.main --config=configs/dfad_cifar10.py --workdir=/tmp/dfad_cifar10
"""

from osgan_jax import config as config_lib


def get_config():
  return config_lib.dfad_cifar10_config('dfad')
