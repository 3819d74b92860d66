from glob import glob

from setuptools import find_packages, setup

PACKAGE = "real_robot"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml", "README.md"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # numpy / torch and the project's `policy` and `envs` packages come from the environment
    # (`pip install -e .` of the project into a venv made with --system-site-packages).
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="Diffusion Policy Stack maintainers",
    maintainer_email="maintainers@example.com",
    description="ROS 2 deployment of the Diffusion Policy stack",
    license="MIT",
    entry_points={
        "console_scripts": [
            "policy_node = real_robot.policy_node:main",
            "sim_robot = real_robot.sim_robot:main",
            "recorder = real_robot.recorder:main",
        ],
    },
)
