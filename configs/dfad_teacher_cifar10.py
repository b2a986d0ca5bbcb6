"""DFAD teacher on CIFAR-10: ResNet-34, the first of two commands (needs the data).

DFAD's teacher recipe: SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, 200
epochs (78,125 steps), here with a cosine decay; test accuracy every 5 epochs. Reads
tfds ``cifar10`` prepared as array_record (``tfds build cifar10
--file_format=array_record --data_dir=DIR``, then ``--config.data.path=DIR``; the
default is tfds' data_dir). No data augmentation (DFAD crops and flips), so expect a
teacher a few points below DFAD's. A GPU job: a CPU takes days. The checkpoint lands
where ``configs/dfad_cifar10.py`` looks for it (``dfad.teacher_workdir``):

  python -m osgan_jax.main --config=configs/dfad_teacher_cifar10.py --workdir=/tmp/dfad_teacher_cifar10

Then distil it without data: see ``configs/dfad_cifar10.py``.
"""

from osgan_jax import config as config_lib


def get_config():
  return config_lib.dfad_cifar10_config('teacher')
