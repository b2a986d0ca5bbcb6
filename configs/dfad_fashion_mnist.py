"""DFAD on Fashion-MNIST: the LeNet-5 teacher distilled into LeNet-5-half without data.

One-stage by default (one student and one generator update per step from one forward
and one backward pass, the gradient reversed at the generator's output); DFAD's
two-stage schedule (``dfad.student_steps=5`` student updates per generator update)
with ``--config.stage=two``. Student test accuracy every 500 steps. Needs the teacher
of ``configs/dfad_teacher_fashion_mnist.py`` in ``dfad.teacher_workdir``:

  python -m osgan_jax.main --config=configs/dfad_teacher_fashion_mnist.py --workdir=/tmp/dfad_teacher_fmnist
  python -m osgan_jax.main --config=configs/dfad_fashion_mnist.py --workdir=/tmp/dfad_fmnist
"""

from osgan_jax import config as config_lib


def get_config():
  return config_lib.dfad_config('dfad')
