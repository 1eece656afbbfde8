"""The bundled demo: loading it (load.py) and shipping a newly trained teacher into assets/ (ship.py)."""

from hybridlab.demo.load import Demo, load_demo

__all__ = ["Demo", "load_demo"]
