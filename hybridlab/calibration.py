"""The public face of calibration data (`from hybridlab.calibration import batched`); the code lives in
hybridlab.data.calibration."""

from hybridlab.data.calibration import batched, load_calibration, load_token_array

__all__ = ["batched", "load_calibration", "load_token_array"]
