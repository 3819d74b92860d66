"""ROS 2 deployment of the project's Diffusion Policy: the policy node and a Push-T sim robot."""
