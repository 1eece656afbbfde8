"""The built-in job kinds; importing this package registers them."""

from hybridlab.jobs.kinds import bench, distill, evaluate, importance, prune, search  # noqa: F401
