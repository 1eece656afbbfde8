"""The paper's ablations on one teacher: the arms (arms.py), their runs (runs.py), the driver (run.py)
and the generated results page (report.py)."""

from hybridlab.study.run import StudyResult, StudySettings, publish, run_study, target_params

__all__ = ["StudyResult", "StudySettings", "publish", "run_study", "target_params"]
