"""DFAD teacher: LeNet-5 trained on Fashion-MNIST (32x32), the first of two commands.

Supervised, Adam (lr 1e-3), batch 128, 2,000 steps (about 4 epochs; 88.2% test
accuracy, 106 s of steps on a shared 2-core CPU). The checkpoint lands where
``configs/dfad_fashion_mnist.py`` looks for it (``dfad.teacher_workdir``):

  python -m osgan_jax.main --config=configs/dfad_teacher_fashion_mnist.py --workdir=/tmp/dfad_teacher_fmnist

Then distil it without data: see ``configs/dfad_fashion_mnist.py``.
"""

from osgan_jax import config as config_lib


def get_config():
  return config_lib.dfad_config('teacher')
