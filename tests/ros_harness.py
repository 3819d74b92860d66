"""Shared pieces of the ROS 2 end-to-end tests: the command line launch_ros generates, parameter
files, the environment the installed executables run with, a group of node processes. The fixtures
(``install``, ``processes``, ``ros``, ``checkpoint``) are in conftest.py.

Importing this module pins the test processes to loopback discovery on a private domain id."""
import os
import random
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "real_robot"
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(20, 100))


def node_env(install):
    site = next((install / "lib").glob("python3*/site-packages"))
    return dict(os.environ, PYTHONPATH=f"{site}:{REPO}", PYTHONUNBUFFERED="1",
                ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", OMP_NUM_THREADS="1")


def launch_ros_command(install, executable, name, namespace, params_file, remaps=()):
    """The command line launch_ros builds for a Node(name=, namespace=, parameters=[file], remappings=)."""
    command = [str(install / "lib" / "real_robot" / executable), "--ros-args", "-r", f"__node:={name}",
               "-r", f"__ns:={namespace}", "--params-file", str(params_file)]
    for source, target in remaps:
        command += ["-r", f"{source}:={target}"]
    return command


def write_params(path, **params):
    import yaml

    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


class Processes:
    def __init__(self):
        self.procs = []

    def start(self, command, env, log):
        handle = open(log, "w")
        proc = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(2)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
