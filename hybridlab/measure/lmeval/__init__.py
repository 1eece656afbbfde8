"""Bridge from hybridlab models to lm-evaluation-harness, with tasks shipped in the project.

`continuation` builds the multiple-choice "true continuation" task from validation tokens;
`harness` runs local and standard lm-eval tasks on an in-memory model.
"""
