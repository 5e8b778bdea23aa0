"""Installs twostage_jax: a JAX/Flax two-stage behaviour-correction agent."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.4.30",
    "flax>=0.10",
    "optax>=0.2.5",  # optax.tree.norm (the updates' grad_norm) first ships in 0.2.5
    "numpy>=1.26",
    "orbax-checkpoint>=0.6",
    "absl-py>=2.1",
    "rliable>=1.2",
    # rliable pins arch<8, whose 7.x releases fail to import under pandas 3.
    "pandas>=2.0,<3",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "pillow>=10.0",
]
SIM = [
    "metaworld==3.1.1",
    "mujoco==3.3.0",
    "gymnasium>=1.0",
]
LEROBOT = [  # twostage_jax.data.lerobot: LeRobot v3 datasets (tested: pyarrow 26.0.1, av 18.1.0)
    "pyarrow>=15.0",
    "av>=14.0",  # PyAV, FFmpeg's libraries with AV1 (libdav1d) and H.264 decoders
]
DEV = LEROBOT + [  # the tests read the LeRobot fixture
    "pytest>=8.0",
    "pytest-xdist>=3.5",  # pytest.ini: 2 workers, --dist loadscope (largest modules first since 3.5)
]

CUDA = ["jax[cuda12]>=0.4.30"]  # JAX's CUDA build, for experiments/gpu.sh on an NVIDIA GPU

setup(
    name="twostage_jax",
    version="0.1.0",
    description=(
        "JAX/Flax reimplementation of the two-stage offline behaviour-correction agent "
        "for vision-based robot manipulation."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # the library and its launcher (twostage_jax.launch); experiments/ (configs, studies, tools)
    # runs from a source checkout: `python -m experiments.NAME` from its root
    packages=find_packages(include=["twostage_jax", "twostage_jax.*"]),
    install_requires=CORE,
    extras_require={"sim": SIM, "lerobot": LEROBOT, "dev": DEV, "all": SIM + DEV, "cuda": CUDA},
    entry_points={"console_scripts": ["twostage=twostage_jax.launch.main:run"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
